"""Checks of a config against this machine, made before Ray starts (`launch/preflight.py` picks
the ones each command needs): model directories and hub names, Python reward functions, data
paths, GPUs and cores.

Each check returns its problems, one line each, naming the config key, the value seen and the
fix. Nothing here starts a process or writes a file; only a hub name costs network time, bounded
by ``HUB_TIMEOUT_S`` for all of them together.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rlhf_dist.errors import UserError
from rlhf_dist.rewards.functions import Binding, load_python_function

HUB_TIMEOUT_S = 8.0
PREFLIGHT_READ_BYTES = 64 * 2**20
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json", "*.h5", "*.msgpack")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")
_HUB_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")


@dataclass(frozen=True)
class ModelRef:
    """A model (or tokenizer) directory or hub name that the run will load."""

    setting: str  # the config key naming it, e.g. "reward.components.1.path"
    path: str
    weights: bool = True  # the run loads a model from it
    tokenizer: bool = False  # the run loads a tokenizer from it
    kind: str | None = None  # "causal" (a policy, a reference) or "reward" (a scorer); None: either


def looks_local(path: str) -> bool:
    """A path that exists, or is written as one: it starts with ``.``, ``/`` or ``~``, or has a
    separator but is no ``org/name`` hub id (more than one ``/``, a backslash, characters the hub
    does not allow, or an ``org`` that is a directory here, as in ``models/nothere``)."""
    if os.path.exists(path) or path.startswith((".", "/", "~")) or "\\" in path:
        return True
    parts = path.split("/")
    if len(parts) > 2 or not all(_HUB_PART.fullmatch(p) for p in parts):
        return True
    return len(parts) == 2 and os.path.isdir(parts[0])


def model_problems(refs: Sequence[ModelRef], hub_timeout_s: float = HUB_TIMEOUT_S) -> list[str]:
    """What stops each model or tokenizer from loading: local directories are looked at here,
    hub names are asked of the hub (all at once, ``hub_timeout_s`` in all)."""
    local = [ref for ref in refs if looks_local(ref.path)]
    problems = [p for ref in local if (p := _directory_problem(ref))]
    return problems + _hub_problems([ref for ref in refs if ref not in local], hub_timeout_s)


def _directory_problem(ref: ModelRef) -> str | None:
    path, what = Path(ref.path), "tokenizer" if not ref.weights else "model"
    if ref.path.startswith("~"):
        full = Path(ref.path).expanduser()
        return (f"{ref.setting} {ref.path!r}: '~' is not expanded in a config; write the full path"
                + (f", {str(full)!r}" if full.exists() else ""))
    if not path.exists():
        return (f"{ref.setting} {ref.path!r} does not exist{_relative_to_cwd(path)}; point it at a Hugging Face "
                f"{what} directory, or a hub name such as Qwen/Qwen2.5-0.5B-Instruct")
    if not path.is_dir():
        return f"{ref.setting} {ref.path!r} is a file; point it at the {what} directory that holds it"
    if ref.weights and not (path / "config.json").is_file():
        return (f"{ref.setting} {ref.path!r} has no config.json, so it is not a Hugging Face model directory; "
                "point it at one written by save_pretrained")
    if ref.weights and not any(next(path.glob(pattern), None) for pattern in WEIGHT_PATTERNS):
        return (f"{ref.setting} {ref.path!r} holds no weights (no *.safetensors or *.bin file, nor their "
                "index.json); point it at a directory written by save_pretrained, with its weights")
    if ref.tokenizer and not any((path / name).is_file() for name in TOKENIZER_FILES):
        other = " or set model.tokenizer to one" if ref.setting == "model.path" else ""
        return (f"{ref.setting} {ref.path!r} has no tokenizer ({', '.join(TOKENIZER_FILES)}); save it there "
                f"with tokenizer.save_pretrained(DIR){other}")
    return _kind_problem(ref) if ref.kind else None


_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")
_REWARD_SUFFIX = "ForSequenceClassification"


def _kind_problem(ref: ModelRef) -> str | None:
    """A sequence classifier where a causal LM belongs, or the reverse, read from config.json's
    ``architectures`` (and ``id2label`` for the number of labels). Unknown architectures pass."""
    try:
        config = json.loads((Path(ref.path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"{ref.setting} {ref.path!r}: config.json is not readable JSON; rewrite it with save_pretrained"
    archs = [a for a in config.get("architectures") or [] if isinstance(a, str)]
    if not archs:
        return None
    found = archs[0]
    if ref.kind == "causal" and any(a.endswith(_REWARD_SUFFIX) for a in archs):
        return (f"{ref.setting} {ref.path!r} holds a {found}, a sequence classifier (a reward model); "
                f"{ref.setting} needs a causal LM (an ...ForCausalLM architecture), such as the policy an SFT run writes")
    if ref.kind == "reward":
        if not any(a.endswith(_REWARD_SUFFIX) for a in archs):
            kind = "a causal LM" if any(a.endswith(_CAUSAL_SUFFIXES) for a in archs) else "not a sequence classifier"
            return (f"{ref.setting} {ref.path!r} holds a {found}, {kind}; a reward model must be an "
                    f"...{_REWARD_SUFFIX} with num_labels=1, such as `rlhf-dist rm` writes (its model/ folder)")
        labels = len(config.get("id2label") or {}) or int(config.get("num_labels", 1))
        if labels != 1:
            return (f"{ref.setting} {ref.path!r} holds a {found} with num_labels={labels}; a reward model "
                    "gives one score per sequence (num_labels=1), such as `rlhf-dist rm` writes")
    return None


def _hub_problems(refs: Sequence[ModelRef], timeout_s: float) -> list[str]:
    """Ask the hub about every name at once, in daemon threads: a slow DNS or a hanging proxy
    costs ``timeout_s`` at most, and the answer is "unreachable"."""
    if not refs:
        return []
    names = sorted({ref.path for ref in refs})
    answers: dict[str, str | None] = {}
    threads = [threading.Thread(target=_ask_hub, args=(name, answers), daemon=True) for name in names]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout_s
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    problems = []
    for ref in refs:
        answer = answers.get(ref.path, f"no answer within {timeout_s:g} s")
        if answer is None:
            continue
        if answer == "missing":
            problems.append(
                f"{ref.setting} {ref.path!r} is neither a local directory nor a model on the Hugging Face hub "
                "(or it is private: log in with `hf auth login`); check the name, or point it at a local directory"
            )
        else:
            problems.append(
                f"{ref.setting}: no local directory {ref.path!r}, and the hub could not be reached ({answer}); "
                "download the model first (`hf download NAME --local-dir DIR`) and point at DIR"
            )
    return problems


def _ask_hub(name: str, answers: dict[str, str | None]) -> None:
    """``answers[name]``: None (cached here, or on the hub), ``"missing"``, or why the hub did not answer."""
    from huggingface_hub import HfApi, constants, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        if isinstance(try_to_load_from_cache(name, "config.json"), str):
            answers[name] = None
            return
        if constants.HF_HUB_OFFLINE:
            answers[name] = "HF_HUB_OFFLINE is set"
            return
        HfApi().model_info(name, timeout=HUB_TIMEOUT_S)
        answers[name] = None
    except GatedRepoError:
        answers[name] = None  # it exists; access is the download's business, with its own message
    except RepositoryNotFoundError:
        answers[name] = "missing"
    except Exception as exc:  # connection refused, DNS, timeout, proxy: all mean "not reachable"
        answers[name] = _first_line(exc) or type(exc).__name__


def vocab_problem(model_setting: str, model_path: str, tokenizer_setting: str, tokenizer_path: str) -> str | None:
    """A tokenizer with more tokens than the model embeds: its highest ids would index past the
    embedding. Both must be local directories; None when they agree or cannot be read here."""
    if not (looks_local(model_path) and looks_local(tokenizer_path)):
        return None
    try:
        config = json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    embedded = config.get("vocab_size")
    if not isinstance(embedded, int):
        return None
    try:
        from transformers import AutoTokenizer

        tokens = len(AutoTokenizer.from_pretrained(tokenizer_path))
    except Exception:  # an unreadable tokenizer is named by the directory checks or at load
        return None
    if tokens <= embedded:
        return None
    return (f"{tokenizer_setting} {tokenizer_path!r} has {tokens} tokens, but {model_setting} {model_path!r} embeds only "
            f"{embedded} (config.json vocab_size); use the model's own tokenizer, or resize the model's embeddings "
            "(model.resize_token_embeddings) and save it")


# -- Python reward functions ---------------------------------------------------------------------


def python_function_problem(spec: str, setting: str, root: str | None = None) -> str | None:
    """Import ``module:function`` as the reward scorer will: from ``root`` (default: the current
    directory, which Ray puts on its workers' path) and PYTHONPATH. None when it imports and is
    callable."""
    try:
        # PYTHONPATH as it is now: the actors start from this environment, even when it was set
        # after this process began (a library caller, a test), so this process's sys.path may lack it.
        env_path = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        with _on_path([root or os.getcwd(), *env_path]):
            load_python_function(spec)
    except UserError as exc:
        return f"{setting}: {exc}"
    except SyntaxError as exc:
        return f"{setting}: cannot import {spec!r}: {exc.filename} line {exc.lineno}: {exc.msg}; fix the module"
    except (Exception, SystemExit) as exc:  # the module's own code failed while it was imported
        return f"{setting}: importing the module of {spec!r} raised {type(exc).__name__}: {_first_line(exc)}; fix the module"
    return None


def python_binding_problem(spec: str, setting: str, columns: Mapping[str, Sequence[str]],
                           root: str | None = None) -> str | None:
    """Whether ``module:function`` can be called on the rows of each data source: ``columns`` maps a
    source's name ("data.prompts") to the column names its rows carry. None when every parameter
    gets a value (see rlhf_dist/rewards/functions.py); run after :func:`python_function_problem`."""
    env_path = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    try:
        with _on_path([root or os.getcwd(), *env_path]):
            binding = Binding.of(load_python_function(spec), f"{setting}: {spec}")
    except UserError as exc:
        return f"{setting}: {exc}" if not str(exc).startswith(setting) else str(exc)
    except (Exception, SystemExit):  # an import failure: python_function_problem has said it
        return None
    return next((p for source, names in columns.items() if (p := binding.problem(names, source))), None)


def on_user_path() -> contextlib.AbstractContextManager[None]:
    """The current directory and PYTHONPATH on sys.path, as the actors import the user's code."""
    env_path = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return _on_path([os.getcwd(), *env_path])


@contextmanager
def _on_path(roots: list[str]) -> Iterator[None]:
    """``roots`` on sys.path for one import (the console script's path lacks the current directory),
    writing no ``__pycache__`` into the user's folders: a check leaves nothing behind."""
    added = [r for r in dict.fromkeys(roots) if r not in sys.path and not (r == os.getcwd() and "" in sys.path)]
    sys.path[:0] = added
    no_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        yield
    finally:
        sys.dont_write_bytecode = no_bytecode
        for r in added:
            sys.path.remove(r)


# -- remote rewards ------------------------------------------------------------------------------


def remote_reward_problem(url: str, setting: str, timeout_s: float = 3.0) -> str | None:
    """Whether a remote reward's host accepts a connection (nothing is sent: a POST could cost the
    server work). None when it does."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{setting}={url!r} is not an http:// or https:// URL"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout_s):
            return None
    except OSError as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or type(exc).__name__)
        return (f"{setting}={url!r} cannot be reached ({reason} from {parts.hostname}:{port} within {timeout_s:g} s); "
                "start the reward server, or fix the URL")


# -- data, GPUs and cores ------------------------------------------------------------------------


def data_path_problem(path: str, setting: str, read: Callable[[], object] | None = None) -> str | None:
    """A data path that does not exist or cannot be read. Data up to ``PREFLIGHT_READ_BYTES`` is also
    read here by ``read`` (the reader the run uses, with its messages), so that a binary, non-UTF-8,
    malformed or corrupt file fails in seconds; larger data is read once, later, still before Ray."""
    where = Path(path).expanduser()
    if not where.exists():
        return (f"{setting}={path!r} does not exist{_relative_to_cwd(where)}; give a .jsonl or .parquet file, or a "
                "directory written by `datasets`' save_to_disk")
    if not os.access(where, os.R_OK | (os.X_OK if where.is_dir() else 0)):
        return f"{setting}={path!r} cannot be read (permission denied); fix its permissions or copy it"
    if read is not None and data_size(where) <= PREFLIGHT_READ_BYTES:
        try:
            read()
        except UserError as exc:
            return str(exc)
    return None


def data_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def gpu_problem(requests: dict[str, float], visible_gpus: int) -> str | None:
    """``requests``: config key -> GPUs per worker. None when nothing asks for a GPU or there is one."""
    asked = [f"{key}={value:g}" for key, value in requests.items() if value > 0]
    if not asked or visible_gpus > 0:
        return None
    shown = os.environ.get("CUDA_VISIBLE_DEVICES")
    hidden = f" (CUDA_VISIBLE_DEVICES={shown!r})" if shown is not None else ""
    return (f"{', '.join(asked)} asks for GPUs, but this machine has none that torch can see{hidden}; set them to 0 "
            "for a CPU run, or run on a GPU cluster (`rlhf-dist submit --address ...`)")


def oversubscription_warning(cpus: float, learners: int, cores: int, cpu_keys: str) -> str | None:
    """More CPUs or learner ranks than this machine has cores: it runs, oversubscribed and slow."""
    if cpus <= cores and learners <= cores:
        return None
    return (f"this run asks for {cpus:g} CPUs ({cpu_keys}) and {learners} learner ranks, and this machine has "
            f"{cores} cores: Ray will oversubscribe them and steps will be slow; lower learner.num_workers or "
            "the num_cpus, or run on a cluster")


def _relative_to_cwd(path: Path) -> str:
    return "" if path.is_absolute() else f" (relative paths start at {os.getcwd()})"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
