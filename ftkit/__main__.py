from ftkit.cli import main
import sys
sys.exit(main())
