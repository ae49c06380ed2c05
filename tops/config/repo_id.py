"""Hub repo ids as the Hub accepts them: checked where the config is read (export.repo_id) and by
the export commands, so the config package needs nothing from tops.hub."""

from __future__ import annotations

from tops.errors import UserError, quote


def check_repo_id(repo_id: str) -> str:
    """ORG/NAME as the Hub accepts it, else one UserError line."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise UserError(f"--repo-id {quote(repo_id)}: expected ORG/NAME, e.g. my-org/tops-gsm8k")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        reason = str(exc).split("\n")[0].rstrip(".").replace(repo_id, "…")  # quoted once, cut to 80
        raise UserError(f"--repo-id {quote(repo_id)}: not a valid Hub repo id ({reason[:200]})") from None
    return repo_id
