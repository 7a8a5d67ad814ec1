"""What every recipe section shares: unknown keys are errors, and assignments are validated too."""

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
