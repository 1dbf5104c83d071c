"""`DataArguments`: what to train on, as flags (`--train_file`, `--dataset_mixture` ...) and config-file keys."""

from dataclasses import dataclass, field

from pretraining.data.mixture import MixtureSource, parse_mixture
from pretraining.errors import DataError


@dataclass
class DataArguments:
    _argument_group_name = "data (what to train on)"
    dataset_name: str | None = field(default="HuggingFaceTB/smollm-corpus", metadata={"help": "Hub dataset to stream."})
    dataset_config_name: str | None = field(default="cosmopedia-v2", metadata={"help": "Its configuration."})
    train_file: str | None = field(default=None, metadata={
        "help": "Local training data (jsonl/json/parquet/csv/txt) instead of the Hub dataset; same streaming path."})
    validation_file: str | None = field(default=None, metadata={
        "help": "Local validation data. Default: hold out the first --validation_documents documents."})
    text_column: str = field(default="text", metadata={"help": "Column holding the documents' text."})
    block_size: int = field(default=2048, metadata={"help": "Tokens per packed training sample."})
    streaming: bool = field(default=True, metadata={
        "help": "Stream the data (no download or Arrow conversion before training)."})
    validation_documents: int = field(default=1000, metadata={
        "help": "Without --validation_file: documents held out from the start of the stream (never trained on)."})
    max_eval_samples: int = field(default=128, metadata={
        "help": "At most this many packed blocks per evaluation (per source with --dataset_mixture)."})
    dataset_mixture: list[str] | None = field(default=None, metadata={
        "help": "Train on a weighted mixture instead of --dataset_name/--train_file: SOURCE[@COLUMN]=WEIGHT ..., "
                "SOURCE a Hub dataset[:config] (HuggingFaceTB/smollm-corpus:fineweb-edu-dedup) or a local file or "
                "glob (data/code/*.parquet), @COLUMN its text column if not --text_column. Weights are normalized: "
                "each document is drawn from a source with its weight's probability; a source that runs out "
                "starts again. In a config file: a YAML list of the same strings or a mapping SOURCE: WEIGHT."})
    document_masking: bool = field(default=False, metadata={
        "help": "Attention stays within each document of a packed block (position ids restart after each EOS). "
                "Off in the SmolLM2 recipe."})
    # --dataset_mixture parsed, once, here (not a flag)
    mixture: list[MixtureSource] | None = field(default=None, init=False)

    def __post_init__(self):
        problems = []
        if self.dataset_mixture is not None:
            try:
                self.mixture = parse_mixture(self.dataset_mixture, self.text_column)
            except DataError as err:
                problems.append(str(err))
            if self.train_file:
                problems.append("--dataset_mixture and --train_file both given: list the file in the mixture")
        if self.block_size <= 0:
            problems.append(f"block_size must be positive, got {self.block_size}")
        if self.validation_documents < 0:
            problems.append(f"validation_documents must be >= 0, got {self.validation_documents}")
        if self.max_eval_samples <= 0:
            problems.append(f"max_eval_samples must be positive, got {self.max_eval_samples}")
        if problems:
            raise ValueError("; ".join(problems))
