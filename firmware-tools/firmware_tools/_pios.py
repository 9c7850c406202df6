"""Raspberry Pi OS first-boot conventions for the FAT boot partition.

Bookworm images run ``raspberrypi-sys-mods``' firstboot, which reads
``custom.toml`` (``init_config``: hostname, user, SSH, Wi-Fi). Older Bookworm and
Bullseye images read ``userconf.txt`` (``user:crypted-password``) and an empty
``ssh`` file; both are written so either generation comes up configured.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

__all__ = ["BootSettings", "boot_files", "wpa_psk"]


@dataclass(frozen=True, slots=True)
class BootSettings:
    hostname: str
    user: str = "pi"
    password_hash: str = "*"  # crypt(3) string; "*" = no password login
    ssh_keys: tuple[str, ...] = ()
    wifi_ssid: str | None = None
    wifi_psk: str | None = None
    wifi_country: str = "GB"
    timezone: str | None = None


def _s(value: str) -> str:
    """A TOML basic string (JSON's escapes are a subset TOML accepts)."""
    return json.dumps(value)


def wpa_psk(ssid: str, passphrase: str) -> str:
    """The 256-bit WPA key as hex, as ``wpa_passphrase`` computes it (Imager stores this)."""
    if len(passphrase) == 64:
        return passphrase.lower()
    return hashlib.pbkdf2_hmac("sha1", passphrase.encode(), ssid.encode(), 4096, 32).hex()


def custom_toml(s: BootSettings) -> str:
    lines = [
        "# Raspberry Pi OS first-boot settings, written by edgeflash prepare.",
        "config_version = 1",
        "",
        "[system]",
        f"hostname = {_s(s.hostname)}",
        "",
        "[user]",
        f"name = {_s(s.user)}",
        f"password = {_s(s.password_hash)}",
        "password_encrypted = true",
        "",
        "[ssh]",
        f"enabled = {'true' if s.ssh_keys else 'false'}",
        "password_authentication = false",
        "authorized_keys = [" + ", ".join(_s(k) for k in s.ssh_keys) + "]",
    ]
    if s.wifi_ssid is not None and s.wifi_psk is not None:
        lines += [
            "",
            "[wlan]",
            f"ssid = {_s(s.wifi_ssid)}",
            f"password = {_s(wpa_psk(s.wifi_ssid, s.wifi_psk))}",
            "password_encrypted = true",
            "hidden = false",
            f"country = {_s(s.wifi_country)}",
        ]
    if s.timezone:
        lines += ["", "[locale]", f"timezone = {_s(s.timezone)}"]
    return "\n".join(lines) + "\n"


def boot_files(s: BootSettings) -> dict[str, bytes]:
    """Path on the boot partition -> contents."""
    files = {
        "/custom.toml": custom_toml(s).encode(),
        "/userconf.txt": f"{s.user}:{s.password_hash}\n".encode(),
    }
    if s.ssh_keys:
        files["/ssh"] = b""
    return files
