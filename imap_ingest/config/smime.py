"""A folder's ``smime:``: the keys, trust and passphrases of RT::Crypt::SMIME, for any tracker."""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import DirectoryPath, Field, SecretStr, field_validator, model_validator

from .values import Duration, Model, SecretFromEnv, SecretFromFile, Size, parse_size

Mode = Literal["decrypt", "verify", "pass-through"]
# One passphrase for every key, or one per address with "" as the fallback (RT's Passphrase).
Passphrases = SecretStr | dict[str, SecretStr]


class SMime(Model):
    """S/MIME before the rules: decrypt and verify, and say so in headers rules can match."""

    keyring: DirectoryPath | None = None  # ADDRESS.pem with key + certificate (RT's Keyring)
    ca_path: Path | None = None  # PEM file or c_rehash directory of trusted CAs (RT's CAPath)
    accept_untrusted_cas: bool = False  # RT's AcceptUntrustedCAs: "untrusted" instead of "bad"
    allow_weak_digests: bool = False  # MD5 and SHA-1 signatures count as good
    passphrase: Passphrases | None = None
    passphrase_file: SecretFromFile | dict[str, SecretFromFile] | None = None
    passphrase_env: SecretFromEnv | dict[str, SecretFromEnv] | None = None
    # None: pass-through for RT (its own SMIME runs on the raw bytes), decrypt for the others.
    mode: Mode | None = None
    keep_original: bool = False  # attach the S/MIME original (smime.p7m/.p7s) to what is sent
    # The verdict also as the first text part (mode decrypt): Redmine shows no mail headers.
    verdict_in_body: bool = False
    openssl: str = "openssl"  # RT's OpenSSL
    timeout: Duration = 30.0  # for each openssl run
    max_size: Size = parse_size("25M")
    max_layers: Annotated[int, Field(ge=1, le=8)] = 4  # signed inside encrypted inside …

    @field_validator("ca_path")
    @classmethod
    def _exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.exists():
            raise ValueError(f"{value} does not exist (a PEM file or a c_rehash directory)")
        return value

    @field_validator("openssl")
    @classmethod
    def _found(cls, value: str) -> str:
        found = shutil.which(value)
        if found is None:
            raise ValueError(f"{value!r} is not an executable (the openssl CLI is needed)")
        return found

    @model_validator(mode="after")
    def _one_passphrase_form(self) -> Self:
        given = [p for p in (self.passphrase, self.passphrase_file, self.passphrase_env)
                 if p is not None]
        if len(given) > 1:
            raise ValueError("give only one of passphrase, passphrase_file, passphrase_env")
        return self

    def _passphrases(self) -> SecretStr | Mapping[str, SecretStr] | None:
        return self.passphrase or self.passphrase_file or self.passphrase_env

    def passphrase_for(self, address: str) -> str | None:
        """The passphrase of ``address``'s key: its own, else the ``''`` one; None: none."""
        given = self._passphrases()
        if isinstance(given, SecretStr):
            return given.get_secret_value()
        if given is None:
            return None
        by_address = {name.lower(): secret for name, secret in given.items()}
        secret = by_address.get(address.lower(), by_address.get(""))
        return secret.get_secret_value() if secret else None

    def secrets(self) -> Iterator[str]:
        """Every passphrase, for the log redactor."""
        given = self._passphrases()
        if isinstance(given, SecretStr):
            yield given.get_secret_value()
        elif given is not None:
            yield from (secret.get_secret_value() for secret in given.values())
