"""Hugging Face hub paths, `hf://ORG/NAME[@REVISION]`, wherever a HF folder is asked for.

    local_dir("hf://bigscience/bloomz-560m")   # -> the snapshot folder, downloaded once
    local_dir("/data/bloomz-560m")              # -> "/data/bloomz-560m", as it is

Train's INIT_FROM_HF, eval's HF_DIR and convert's --hf_dir / --tokenizer_dir take them;
`push` uploads an export (convert orbax-to-hf --push_to_hub ORG/NAME).
A hub path fetches the repository's top-level config, safetensors and tokenizer files
(`MODEL_FILES`; `TOKENIZER_FILES` alone for a tokenizer), never pickles (`*.bin`, refused
here anyway) nor other folders' files, into the Hugging Face cache (`HF_HOME`, shared
with transformers) on first use; later runs read the cache (with `HF_HUB_OFFLINE=1`,
only the cache). Private or gated repositories use the token of `huggingface-cli login` /
`HF_TOKEN`. On several hosts each downloads its own copy.
"""

from __future__ import annotations

import re

PREFIX = "hf://"
# A HF folder's tokenizer files: what an export and a run folder copy along.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "generation_config.json",
    "chat_template.jinja",
)
MODEL_FILES = ("config.json", "*.safetensors", "model.safetensors.index.json", *TOKENIZER_FILES)
# Top level only: fnmatch's "*" crosses "/", so "*.safetensors" would fetch an onnx/ or
# other subfolder's weights too.
IGNORED = ("*/*",)
_REPO = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


class HubError(ValueError):
    """A hub path that cannot be read (shown as one line)."""


def is_hub_path(path) -> bool:
    return isinstance(path, str) and path.startswith(PREFIX)


def parse(path: str) -> tuple[str, str | None]:
    """`hf://ORG/NAME[@REVISION]` -> (repo id, revision or None); HubError if malformed."""
    repo, at, revision = path[len(PREFIX) :].partition("@")
    if not _REPO.fullmatch(repo) or (at and not revision):
        raise HubError(
            f"{path}: not a hub path; expected hf://ORG/NAME or hf://ORG/NAME@REVISION "
            "(a branch, tag or commit)"
        )
    return repo, revision or None


def local_dir(path: str | None, files: tuple[str, ...] = MODEL_FILES) -> str | None:
    """`path` as a local folder: a hub path's snapshot of `files` (patterns; downloaded
    into the HF cache if not there yet), anything else unchanged. Raises HubError (one
    line, naming `path`) when the download fails: no such repository or revision, no
    access, no network and no cached copy."""
    if not is_hub_path(path):
        return path
    repo, revision = parse(path)
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise HubError(
            f"{path}: needs the huggingface_hub package (pip install huggingface_hub)"
        ) from None
    try:
        folder = snapshot_download(
            repo, revision=revision, allow_patterns=list(files), ignore_patterns=list(IGNORED)
        )
    except Exception as e:  # the hub's errors, HTTP and OS errors alike: one line for each
        raise HubError(
            f"{path}: cannot download it from the Hugging Face hub ({_why(e)})"
        ) from None
    return str(folder)


def _why(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def check_repo(repo: str) -> None:
    """HubError unless `repo` is a repository id ORG/NAME (checked before an export)."""
    if not (_REPO.fullmatch(repo) and "/" in repo):
        raise HubError(f"--push_to_hub {repo}: expected a repository id, ORG/NAME")


def push(folder, repo: str, private: bool = False) -> str:
    """Uploads `folder` (an orbax-to-hf export) to the hub model repository `repo`
    ("ORG/NAME", created if missing; `private` applies to a new one) in one commit;
    returns the commit's URL. Raises HubError (one line) when the upload fails: the
    folder stays as it is, so the same upload can be tried again."""
    check_repo(repo)
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise HubError(
            f"--push_to_hub {repo}: needs the huggingface_hub package (pip install huggingface_hub)"
        ) from None
    try:
        api = HfApi()
        # None, not False: a new repository then takes its organisation's default.
        api.create_repo(repo, repo_type="model", private=private or None, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo,
            repo_type="model",
            folder_path=str(folder),
            commit_message="Upload an ecomgpt-jax export",
        )
    except Exception as e:  # the hub's errors (no token, no write access), network errors
        raise HubError(
            f"--push_to_hub {repo}: upload failed ({_why(e)}); {folder} is kept, try again"
        ) from None
    return str(getattr(commit, "commit_url", commit))
