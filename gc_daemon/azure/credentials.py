"""Azure credentials by name, as the configuration's ``azure.credential`` names them.

``emulator`` sends a fixed bearer token: it is for local stand-ins only (the configuration refuses it
unless every endpoint is a loopback address). azure.identity is imported lazily so that a test or a
stand-in run does not pay for it, and no constructor here does any I/O.
"""

from __future__ import annotations

import time
from typing import Any

from azure.core.credentials import AccessToken, AccessTokenInfo, TokenCredential

CREDENTIAL_KINDS = ("default", "managed_identity", "azure_cli", "emulator")

EMULATOR_TOKEN = "vhdgc-emulator-token"
# Far enough away that azure-core never tries to refresh it during a run.
_EMULATOR_LIFETIME_SECONDS = 10 * 365 * 24 * 3600


class EmulatorCredential:
    """A :class:`~azure.core.credentials.TokenCredential` that always returns the same bearer token."""

    def __init__(self, token: str = EMULATOR_TOKEN) -> None:
        self._token = token
        self._expires_on = int(time.time()) + _EMULATOR_LIFETIME_SECONDS

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(self._token, self._expires_on)

    def get_token_info(self, *scopes: str, options: Any = None) -> AccessTokenInfo:
        return AccessTokenInfo(self._token, self._expires_on, token_type="Bearer")

    def close(self) -> None:
        pass

    def __enter__(self) -> "EmulatorCredential":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:  # never show the token
        return "EmulatorCredential()"


def build_credential(kind: str) -> TokenCredential:
    """The credential for ``azure.credential``: default, managed_identity, azure_cli or emulator."""
    if kind == "emulator":
        return EmulatorCredential()
    if kind not in CREDENTIAL_KINDS:
        raise ValueError(f"unknown credential kind {kind!r}; expected one of {', '.join(CREDENTIAL_KINDS)}")
    import azure.identity as identity  # lazy: heavy, and not needed for the emulator

    if kind == "default":
        return identity.DefaultAzureCredential()
    if kind == "managed_identity":
        return identity.ManagedIdentityCredential()
    return identity.AzureCliCredential()
