"""What the identity may do on a resource: ARM's Permissions - List For Resource
(``GET {resource id}/providers/Microsoft.Authorization/permissions?api-version=2022-04-01``).

The answer is a list of permission entries, one per role assignment that applies (``actions``,
``notActions``, ``dataActions``, ``notDataActions``, with ``*`` wildcards). An action is held when
some entry allows it and that same entry does not exclude it (Azure RBAC's rule: each role's
``notActions`` subtract from that role only). Deny assignments are not in this answer; a
deny assignment can still refuse what this says is held.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterable
from typing import Any
from urllib.parse import urljoin, urlsplit

from azure.core.rest import HttpRequest

API_VERSION = "2022-04-01"
MAX_PAGES = 100


class PermissionsError(Exception):
    """The permissions could not be read (HTTP error, a body of the wrong shape)."""


def _matches(action: str, patterns: Any) -> bool:
    if not isinstance(patterns, list):
        return False
    low = action.lower()
    return any(isinstance(p, str) and fnmatch.fnmatchcase(low, p.lower()) for p in patterns)


def holds(permissions: Iterable[dict[str, Any]], action: str, *, data: bool) -> bool:
    """Whether some permission entry allows ``action`` (a data action when ``data``)."""
    allow, deny = ("dataActions", "notDataActions") if data else ("actions", "notActions")
    return any(_matches(action, p.get(allow)) and not _matches(action, p.get(deny)) for p in permissions)


def list_for_resource(client: Any, endpoint: str, resource_id: str) -> list[dict[str, Any]]:
    """Every permission entry the caller has on ``resource_id``, all pages. ``client`` is any ARM
    management client (its pipeline: the credential, retries, timeouts, the host pin)."""
    base = urlsplit(endpoint)
    url: str | None = (
        f"{base.scheme}://{base.netloc}{base.path.rstrip('/')}{resource_id.rstrip('/')}"
        f"/providers/Microsoft.Authorization/permissions?api-version={API_VERSION}"
    )
    out: list[dict[str, Any]] = []
    pages = 0
    while url:
        pages += 1
        if pages > MAX_PAGES:
            raise PermissionsError(f"the permissions list goes on past {MAX_PAGES} pages")
        response = client.send_request(HttpRequest("GET", url))
        if response.status_code != 200:
            raise PermissionsError(_error_text(response))
        try:
            body = json.loads(response.text())
        except ValueError:
            raise PermissionsError("the permissions answer is not JSON") from None
        value = body.get("value") if isinstance(body, dict) else None
        if not isinstance(value, list) or not all(isinstance(p, dict) for p in value):
            raise PermissionsError("the permissions answer has no 'value' list of objects")
        out.extend(value)
        next_link = body.get("nextLink")
        if next_link is not None and not isinstance(next_link, str):
            raise PermissionsError("the permissions answer has a nextLink that is not a string")
        url = urljoin(endpoint.rstrip("/") + "/", next_link) if next_link else None
    return out


def _error_text(response: Any) -> str:
    code = message = None
    try:
        error = json.loads(response.text()).get("error") or {}
        code, message = error.get("code"), error.get("message")
    except (ValueError, AttributeError):
        pass
    text = f"HTTP {response.status_code}" + (f" {code}" if code else "")
    if message:
        text += f": {' '.join(str(message).split())}"
    return text[:400]
