"""`DataArguments`: what to train on, as flags (`--train_file`, `--dataset_mixture` ...) and config-file keys."""

from dataclasses import dataclass, field

from pretraining.data.mixture import DataStage, MixtureSource, parse_mixture, parse_stages, stage_sources
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
                "glob (data/code/*.parquet), @COLUMN its text column if not --text_column. Weights are normalized "
                "token shares: 0.6 is 60%% of the tokens trained on, whatever the sources' document lengths; a "
                "source that runs out starts again. In a config file: a YAML list of the same strings or a mapping "
                "SOURCE: WEIGHT."})
    data_stages: str | None = field(default=None, metadata={
        "help": "Data stages whose mixture changes at given steps (SmolLM2's own training; annealing on "
                "high-quality data during the decay): a JSON list of {\"start_step\": N, \"dataset_mixture\": "
                "{SOURCE: WEIGHT}}, the first at 0; a stage covers the steps after start_step steps until the next "
                "stage. In a config file: a YAML list of mappings. Instead of --dataset_mixture."})
    shuffle_buffer: int = field(default=10000, metadata={
        "help": "Shuffling: each pass reads a source's shards in a new order (seeded by --seed), --shuffle_shards "
                "at once, through a buffer of this many documents (per source and DataLoader worker) drawn at random; "
                "its content is saved in every checkpoint (2 bytes a token). 0: no shuffling, the files in order, "
                "one shard at a time. The evaluation hold-out is read in file order either way."})
    shuffle_shards: int = field(default=8, metadata={
        "help": "With shuffling: shards of a source read at once, a document from each in turn (at most the shards "
                "a DataLoader worker has)."})
    document_masking: bool = field(default=False, metadata={
        "help": "Attention stays within each document of a packed block (position ids restart after each EOS). "
                "Off in the SmolLM2 recipe."})
    # --dataset_mixture or --data_stages parsed, once, here (not flags): every source of the mixture, and the stages
    # (one, from step 0, for --dataset_mixture)
    mixture: list[MixtureSource] | None = field(default=None, init=False)
    stages: list[DataStage] | None = field(default=None, init=False)

    def __post_init__(self):
        problems = []
        try:
            if self.data_stages is not None:
                self.stages = parse_stages(self.data_stages, self.text_column)
                self.mixture = stage_sources(self.stages)[0]
            elif self.dataset_mixture is not None:
                self.mixture = parse_mixture(self.dataset_mixture, self.text_column)
                self.stages = [DataStage(0, self.mixture)]
        except DataError as err:
            problems.append(str(err))
        if self.dataset_mixture is not None and self.data_stages is not None:
            problems.append("--dataset_mixture and --data_stages both given: the mixture is the first stage's")
        for flag in ("dataset_mixture", "data_stages"):
            if self.train_file and getattr(self, flag) is not None:
                problems.append(f"--{flag} and --train_file both given: list the file in the mixture")
        if self.shuffle_buffer < 0:
            problems.append(f"shuffle_buffer must be >= 0 (0: no shuffling), got {self.shuffle_buffer}")
        if self.shuffle_shards <= 0:
            problems.append(f"shuffle_shards must be positive, got {self.shuffle_shards}")
        if self.block_size <= 0:
            problems.append(f"block_size must be positive, got {self.block_size}")
        if self.validation_documents < 0:
            problems.append(f"validation_documents must be >= 0, got {self.validation_documents}")
        if self.max_eval_samples <= 0:
            problems.append(f"max_eval_samples must be positive, got {self.max_eval_samples}")
        if problems:
            raise ValueError("; ".join(problems))
