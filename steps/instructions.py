"""LoadInstructions: start the DPO stage from an existing (curated) instruction set."""

from typing import TYPE_CHECKING, Any, Optional

from distilabel.steps import GeneratorStep
from pydantic import Field, PrivateAttr

from magpie_dl.run.inputs import load_instructions

if TYPE_CHECKING:
    from distilabel.typing import GeneratorStepOutput, StepColumns


class LoadInstructions(GeneratorStep):
    """Emits the rows of an instruction set, read in ``load()``.

    Attributes:
        source: dataset directory, ``.jsonl``/``.json``/``.parquet``/``.csv`` file, or hub id.

    Output columns:
        - uuid (kept when present), instruction, instruction_status (``ok`` or why unusable),
          gen_input_configs, and the source's own columns.
    """

    source: str = Field(description="Instruction set: directory, file or hub id.")

    _rows: Optional[list[dict[str, Any]]] = PrivateAttr(default=None)

    def load(self) -> None:
        super().load()
        self._rows = load_instructions(self.source)

    @property
    def outputs(self) -> "StepColumns":
        return ["uuid", "instruction", "instruction_status", "gen_input_configs"]

    def process(self, offset: int = 0) -> "GeneratorStepOutput":
        rows = self._rows or []
        for start in range(offset, len(rows), self.batch_size):
            batch = rows[start : start + self.batch_size]
            yield batch, start + self.batch_size >= len(rows)
