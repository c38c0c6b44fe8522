"""Names -> local checkpoint folders: local paths, the bundled demo, and Apple's hub repos at the
revisions ml-aim pins (the ml-aim-key snapshots), served from the local cache when offline.

Nothing here runs code from a hub repo: only weights and JSON/text files are fetched.
"""

from __future__ import annotations

import logging
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

from .errors import UserError

log = logging.getLogger("mlx_aimv2")  # notes: the CLI prints them, an app routes them

# apple/ml-aim aim/v2/utils.py (bd9e068): revisions whose model.safetensors uses ml-aim keys
REVISIONS = {
    "aimv2-large-patch14-224": "ac764a25c832c7dc5e11871daa588e98e3cdbfb7",
    "aimv2-huge-patch14-224": "9e0bab0e0abb7b20796d2d0b37f39b7c3b1c1af1",
    "aimv2-1B-patch14-224": "4d24a422f71e87d327d476bc405030fe6593d8b1",
    "aimv2-3B-patch14-224": "df1cbc288096c9742ec8bd6709ff82757972338c",
    "aimv2-large-patch14-336": "639423ae9f07319d24a7fc431b61908110d08d3a",
    "aimv2-huge-patch14-336": "21528bd53a2438a84162e79f1f9a46453b88004c",
    "aimv2-1B-patch14-336": "5a15f23f6757776fdd487283353a018677621939",
    "aimv2-3B-patch14-336": "d1adb39ee92dfd7ecf3114b1ee3aa7e9027ce98f",
    "aimv2-large-patch14-448": "cefb13f21003bdadba65bfbee956c82b976cd23d",
    "aimv2-huge-patch14-448": "44e6440a24a8ea966ad0deadf5399a22d852bcc0",
    "aimv2-1B-patch14-448": "7f292735d3a07a911559c0fabb3ad3e9d141713f",
    "aimv2-3B-patch14-448": "70810b618e4456b724bacc8ef4d2d038060ceda6",
    "aimv2-large-patch14-224-distilled": "d6d09b071e8ba31735c5e05ccd4b2a393020ce90",
    "aimv2-large-patch14-336-distilled": "8fe1704e5cc1c80cefc99c194afcefe21dff1faa",
    "aimv2-large-patch14-native": "cfe7bdbbc924a5f65272d5e2c27fe5f61771a629",
    "aimv2-large-patch14-224-lit": "c2cd59a786c4c06f39d199c50d08cc2eab9f8605",
}
# what a command given no model uses, per kind of model, and what stands in for it offline
DEFAULT = {"vision": "apple/aimv2-large-patch14-224", "lit": "apple/aimv2-large-patch14-224-lit"}
STAND_IN = {"vision": "demo", "lit": "demo-lit"}


# an installed wheel carries the demo inside the package; a clone (or editable install) in weights/
def _bundled(name: str) -> Path:
    packaged = Path(__file__).resolve().parent / name.replace("-", "_")
    return (
        packaged
        if (packaged / "model.safetensors").is_file()
        else Path(__file__).resolve().parent.parent / "weights" / name
    )


BUNDLED = {"demo": _bundled("demo"), "demo-lit": _bundled("demo-lit")}  # the checkpoints that ship with the package
ALLOW = [
    "config.json",
    "preprocessor_config.json",
    "model.safetensors",
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
    # an Ovis2 folder's too: its weights in shards, its language model's tokenizer and templates
    "model.safetensors.index.json",
    "model-*.safetensors",
    "tokenizer.json",
    "added_tokens.json",
    "chat_template.json",
    "chat_template.jinja",
    "processor_config.json",
    "generation_config.json",
]


def is_hub_id(name: str) -> bool:
    return name.removeprefix("apple/") in REVISIONS or (
        name.count("/") == 1 and not Path(name).exists() and not name.startswith((".", "/", "~"))
    )


_REACHABLE: dict = {}


def _offline() -> bool:
    """HF_HUB_OFFLINE is set, or the hub did not answer a 3-second connect (asked once per process):
    then only the local cache is used, at once, instead of ~20 s of retries."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return True
    if "hub" not in _REACHABLE:
        url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
        try:
            socket.create_connection(
                (url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=3
            ).close()
            _REACHABLE["hub"] = True
        except OSError:
            _REACHABLE["hub"] = False
            log.warning(
                "%s is unreachable; using the local Hugging Face cache only (set HF_HUB_OFFLINE=1 to skip this check)",
                url.hostname,
            )
    return not _REACHABLE["hub"]


def resolve(name: str, revision: Optional[str] = None) -> Path:
    """A local folder or file holding the checkpoint `name` refers to."""
    if name in BUNDLED:
        if not (BUNDLED[name] / "model.safetensors").is_file():
            raise UserError(
                f"the {name} checkpoint is missing from {BUNDLED[name]}; reinstall from a full clone of the repo"
            )
        return BUNDLED[name]
    p = Path(name).expanduser()
    if p.exists():
        return p
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise UserError(f"{name}: no such file or folder")
    if not is_hub_id(name):
        raise UserError(f"'{name}' is neither a local path nor a hub id; `mlx-aimv2 models` lists the known names")
    return download(name, revision)


def download(name: str, revision: Optional[str] = None) -> Path:
    """A hub repo's checkpoint files, downloaded or from the local cache; each failure its own line."""
    # huggingface_hub takes half a second to import, so it loads here, where a name must be fetched:
    # `import mlx_aimv2` and the CLI start without it (with the CLI's commands, the package's one import inside functions)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo = name if "/" in name else f"apple/{name}"
    revision = revision or REVISIONS.get(repo.removeprefix("apple/"))
    where = f"{repo}@{(revision or 'main')[:8]}"
    kwargs = dict(repo_id=repo, revision=revision, allow_patterns=ALLOW)
    try:
        folder = Path(snapshot_download(local_files_only=_offline(), **kwargs))
    except HFValidationError:
        raise UserError(
            f"'{repo}' is not a valid hub id (owner/name); give a hub id or a local checkpoint path"
        ) from None
    except GatedRepoError:
        raise UserError(
            f"{repo} is gated: accept its terms on huggingface.co, log in (`hf auth login` or HF_TOKEN), retry"
        ) from None
    except RepositoryNotFoundError:  # the hub answers so for private repos without a token too
        raise UserError(
            f"{repo}: no such repository on the hub, or a private one (log in with `hf auth login`); "
            f"`mlx-aimv2 models` lists the published names"
        ) from None
    except RevisionNotFoundError:
        raise UserError(
            f"{repo}: no revision '{revision}' on the hub; leave out --revision for the pinned one"
        ) from None
    except HfHubHTTPError as e:
        if _status(e) in (401, 403):
            raise _refused(repo, e) from None
        folder = _cached(repo, where, kwargs)  # the hub failed (5xx): what the cache holds
    except LocalEntryNotFoundError as e:  # huggingface_hub's answer when the hub failed and nothing is cached
        if _status(e.__cause__) in (401, 403):
            raise _refused(repo, e.__cause__) from None
        raise _not_cached(where) from None
    except Exception:  # no network, a timeout: what the cache holds
        folder = _cached(repo, where, kwargs)
    if not any((folder / f).is_file() for f in ("model.safetensors", "model.safetensors.index.json")):
        raise UserError(
            f"{where} holds no model.safetensors; is it an AIMv2 checkpoint? Give its hub id or a local folder"
        )
    return folder


def _status(error) -> Optional[int]:
    """The HTTP status of a hub error, if it carries one."""
    response = getattr(error, "response", None)
    return getattr(response, "status_code", None)


def _refused(repo: str, error) -> UserError:
    return UserError(f"{repo}: the hub refused access ({_status(error)}); log in with `hf auth login` or set HF_TOKEN")


def _cached(repo: str, where: str, kwargs: dict) -> Path:
    from huggingface_hub import snapshot_download  # imported here, not at the top (see download)

    try:
        return Path(snapshot_download(local_files_only=True, **kwargs))
    except Exception:
        raise _not_cached(where) from None


def _not_cached(where: str) -> UserError:
    repo = where.partition("@")[0]
    return UserError(
        f"{where} is not in the local Hugging Face cache and the hub cannot be reached; it must be downloaded "
        f"first: run the same command once where the hub answers (or `hf download {repo}`), or pass a local folder"
    )


def fetch_file(repo: str, filename: str, revision: Optional[str] = None) -> Path:
    """One file of a hub repo: downloaded, or from the local cache when offline or unreachable."""
    from huggingface_hub import hf_hub_download  # imported here, not at the top (see download)

    for local_only in [True] if _offline() else [False, True]:
        try:
            return Path(hf_hub_download(repo, filename, revision=revision, local_files_only=local_only))
        except Exception:
            continue
    raise UserError(
        f"{repo}/{filename} is neither in the local Hugging Face cache nor reachable; "
        f"connect once, or give a local path"
    )


def repo_of(name: str) -> Optional[str]:
    """The hub repo a model name stands for (a published short name is Apple's), or None for a path."""
    if name in BUNDLED or Path(name).expanduser().exists() or not is_hub_id(name):
        return None
    return name if "/" in name else f"apple/{name}"


def upload(folder: Path, repo: str, private: bool = False) -> str:
    """Push a folder to the hub as the model repo `repo` (made if missing); its URL. The folder stays
    as it is whatever happens; a refusal (no token, no network, offline) is one line saying how to
    upload it later."""
    from huggingface_hub import HfApi  # imported here, not at the top (see download)
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError

    later = f"the folder is written at {folder}; upload it later with `hf upload {repo} {folder}`"
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise UserError(f"HF_HUB_OFFLINE is set, so nothing was uploaded; {later}")
    check_repo_id(repo)
    _answers(later)
    api = HfApi()
    try:
        api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(
            folder_path=str(folder), repo_id=repo, repo_type="model", commit_message="Upload with mlx-aimv2"
        )
    except HFValidationError:
        raise UserError(f"--upload-repo '{repo}': give a hub id OWNER/NAME; {later}") from None
    except HfHubHTTPError as e:
        why = {401: "not logged in (`hf auth login` or HF_TOKEN)", 403: "this token may not write there"}
        raise UserError(f"{repo}: the hub refused the upload ({why.get(_status(e), _status(e))}); {later}") from None
    except Exception as e:
        if not _network_error(e):
            raise
        raise UserError(f"{repo}: the hub cannot be reached ({type(e).__name__}: {e}); {later}") from None
    return str(getattr(info, "commit_url", None) or f"{api.endpoint}/{repo}")


HUB_TIMEOUT = "MLX_AIMV2_HUB_TIMEOUT"  # seconds the hub has to answer before an upload (default 20)
_HTTP_CLIENTS = ("httpx", "httpx2", "httpcore", "requests", "urllib3")


def _network_error(e: Exception) -> bool:
    """No route, a refused or reset connection, a timeout: OSError, or the HTTP client's own errors
    (huggingface_hub's client is httpx, httpx2 or requests by version; theirs are not OSErrors)."""
    return isinstance(e, (OSError, ValueError)) or any(
        c.__module__.split(".")[0] in _HTTP_CLIENTS for c in type(e).__mro__
    )


def _answers(later: str) -> None:
    """The hub answers an HTTP request within HUB_TIMEOUT seconds, or the upload does not start:
    huggingface_hub's client waits without limit, and a hub that accepts the connection and never
    answers held `convert --upload-repo` for as long as it stayed open."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    raw = os.environ.get(HUB_TIMEOUT, "20")
    try:
        timeout = float(raw)
    except ValueError:
        raise UserError(f"{HUB_TIMEOUT}={raw!r}: give seconds, e.g. 60") from None
    try:
        urllib.request.urlopen(
            urllib.request.Request(endpoint + "/api/whoami-v2", method="GET"), timeout=timeout
        ).close()
    except urllib.error.HTTPError:  # any HTTP answer (401 without a token) means it is there
        return
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, TimeoutError) or isinstance(e, TimeoutError):
            why = f"it did not answer within {timeout:g} s (set {HUB_TIMEOUT}=SECONDS to wait longer)"
        else:
            why = f"cannot reach it: {reason}"
        raise UserError(f"{endpoint}: {why}; {later}") from None


def check_repo_id(repo: str, option: str = "--upload-repo") -> str:
    """A hub repo id OWNER/NAME that the hub can hold (its own rule: letters, digits, - _ ., at most 96
    characters, no .. or --), checked before any work is done."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not isinstance(repo, str) or repo.count("/") != 1 or not all(repo.split("/")):
        raise UserError(f"{option} '{repo}': give a hub id OWNER/NAME, e.g. mlx-community/aimv2-large-8bit")
    try:
        validate_repo_id(repo)
    except HFValidationError as e:
        why = " ".join(str(e).split())
        raise UserError(f"{option} '{repo[:120]}': not a valid hub id ({why[:200]}); give OWNER/NAME") from None
    return repo
