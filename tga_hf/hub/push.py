"""Push an exported folder to the Hugging Face Hub: `HfApi.create_repo(exist_ok=True)` then `upload_folder`.

The token comes from the usual huggingface_hub sources (`token=`, `HF_TOKEN`, `hf auth login`); the endpoint from
`endpoint=` or `HF_ENDPOINT`.
"""

from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import HfApi, constants, get_token
from huggingface_hub.errors import LocalTokenNotFoundError
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects


@dataclass
class PushResult:
    """What `push` uploaded (or, with `dry_run=True`, would upload)."""

    repo_id: str
    files: list[str] = field(default_factory=list)
    repo_url: str | None = None
    commit_url: str | None = None


def upload_files(out_dir: str | Path) -> list[str]:
    """The repository paths `upload_folder` sends for `out_dir` (its default ignore rules applied), sorted."""
    folder = Path(out_dir)
    paths = [path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()]
    return sorted(filter_repo_objects(paths, ignore_patterns=DEFAULT_IGNORE_PATTERNS))


def push(
    out_dir: str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    revision: str | None = None,
    repo_type: str = "model",
    commit_message: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    dry_run: bool = False,
) -> PushResult:
    """Create `repo_id` if needed and upload the exported folder `out_dir` in one call.

    Args:
        out_dir: a folder written by `tga_hf.hub.export` (or `export_index`, with `repo_type="dataset"`).
        repo_id: `namespace/name` on the Hub.
        private: visibility of a newly created repository (an existing one keeps its own).
        revision: branch to push to (created from the default branch when missing); default: the main branch.
        token: a Hub token; default: `HF_TOKEN` or the token saved by `hf auth login`.
        endpoint: the Hub URL; default: `HF_ENDPOINT` or huggingface.co.
        dry_run: only list the files that would be uploaded; nothing is contacted and no token is needed.

    Example:

    ```python
    >>> push("tga-llava", "me/tga-llava", private=True).commit_url
    ```
    """
    folder = Path(out_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder: export the model first (tga-hf export)")
    if not (folder / "README.md").is_file():
        raise FileNotFoundError(f"{folder} has no README.md: is it a folder written by tga-hf export?")
    files = upload_files(folder)
    result = PushResult(repo_id=repo_id, files=files)
    if dry_run:
        return result
    if constants.HF_HUB_OFFLINE:
        raise RuntimeError("HF_HUB_OFFLINE is set: pushing needs the Hub; unset HF_HUB_OFFLINE to push")
    token = token or get_token()
    if token is None:
        raise LocalTokenNotFoundError(
            f"no Hugging Face token to push {repo_id}: set HF_TOKEN, run `hf auth login`, or pass token="
        )
    api = HfApi(endpoint=endpoint, token=token)
    result.repo_url = str(api.create_repo(repo_id, private=private, repo_type=repo_type, exist_ok=True))
    if revision is not None and revision != constants.DEFAULT_REVISION:
        api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        repo_type=repo_type,
        revision=revision,
        commit_message=commit_message or f"Upload {folder.name} with tga-hf",
    )
    result.commit_url = commit.commit_url
    return result


__all__ = ["PushResult", "push", "upload_files"]
