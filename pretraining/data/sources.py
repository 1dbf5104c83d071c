"""Document streams: local files or a Hub dataset as a `datasets` IterableDataset holding the text column.

Everything goes through the streaming path; `streaming=False` only decides whether local files are first
converted to Arrow (faster re-reads, costs disk and start-up time).
"""

from datasets import Dataset, IterableDataset, load_dataset

from pretraining.data.files import bad_record, builder_for, check_columns, check_local_file
from pretraining.data.mixture import MixtureSource
from pretraining.errors import DataError
from pretraining.hub import hub_problem, raise_if_server_error


def load_text_stream(files: list[str], text_column: str, *, dataset_name: str | None = None,
                     dataset_config_name: str | None = None, streaming: bool = True,
                     split: str = "train") -> IterableDataset:
    """A streamed dataset of documents holding `text_column`: local `files` if any, else the Hub's
    `dataset_name` (`dataset_config_name`)."""
    if files:
        for path in files:
            check_local_file(path, text_column)
        builders = {builder_for(path) for path in files}
        if len(builders) > 1:
            raise DataError(f"data files mix formats ({', '.join(sorted(builders))}): {', '.join(files)}")
        try:
            dataset = load_dataset(builders.pop(), data_files={split: files}, split=split, streaming=streaming)
        except ValueError as err:  # the reader parses a first chunk of the files (up to 10 MB) to infer features
            raise bad_record(files, text_column, err) from err
    else:
        try:
            dataset = load_dataset(dataset_name, dataset_config_name, split=split, streaming=streaming)
        except (OSError, ValueError) as err:  # ValueError: a config name the dataset does not have
            raise_if_server_error(err, f"dataset {dataset_name!r} ({dataset_config_name})")
            reason, not_there = hub_problem(err) or (str(err).splitlines()[0], False)
            hint = "; use local files with --train_file [--validation_file] instead" if not_there else ""
            raise DataError(f"cannot load dataset {dataset_name!r} ({dataset_config_name}): {reason}{hint}") from err
        if text_column not in (dataset.column_names or [text_column]):
            check_columns(f"dataset {dataset_name}", dataset.column_names, text_column)
    if isinstance(dataset, Dataset):
        dataset = dataset.to_iterable_dataset()
    return dataset


def load_source(source: MixtureSource, text_column: str, streaming: bool = True,
                where: str | None = None) -> IterableDataset:
    """A source's documents as a stream with one column, `text_column`; errors begin with `where` if given (a mixture's
    source: "dataset_mixture source 'NAME'")."""
    try:
        stream = load_text_stream(source.files, source.text_column, dataset_name=source.dataset_name,
                                  dataset_config_name=source.dataset_config_name, streaming=streaming)
    except DataError as err:
        if where is None:
            raise
        raise DataError(f"{where}: {err}") from None
    stream = stream.select_columns([source.text_column])
    if source.text_column != text_column:
        stream = stream.rename_column(source.text_column, text_column)
    return stream
