"""Outgoing-request guard: only http(s) to public addresses, unless an allow-list says otherwise.

Webhooks and callbacks POST to URLs that clients choose. Without this guard a client could make
the platform reach its own Redis, the cluster's internal services or the cloud metadata
endpoint (SSRF). Names are resolved and every address checked; the connection then goes to a
checked address (with the original Host and TLS server name), so a DNS answer that changes
between the check and the connection (rebinding) cannot slip through.
"""

import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOWED_SCHEMES = frozenset({"http", "https"})


class UnsafeUrlError(ValueError):
    """A URL the platform refuses to reach."""


@dataclass(frozen=True)
class NetGuard:
    """The policy: public addresses, plus `allowed_networks`."""

    allowed_networks: Sequence[IPNetwork] = ()

    def check_address(self, address: IPAddress, host: str) -> None:
        """Raise UnsafeUrlError unless `address` is public or allow-listed."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in network for network in self.allowed_networks):
            return
        if not address.is_global or address.is_multicast:
            raise UnsafeUrlError(
                f"{host} resolves to {address}, a non-public address "
                "(loopback, private, link-local or reserved); it is not reached"
            )

    def check_scheme(self, scheme: str) -> None:
        """Only http and https."""
        if scheme.lower() not in ALLOWED_SCHEMES:
            raise UnsafeUrlError(f"scheme {scheme!r} is not allowed; use http or https")

    def check_literal(self, scheme: str, host: str) -> None:
        """The checks that need no DNS: the scheme, and the host if it is an IP address."""
        self.check_scheme(scheme)
        address = _literal(host)
        if address is not None:
            self.check_address(address, host)

    def resolve(self, host: str, port: int) -> list[IPAddress]:
        """Every address `host` resolves to, each checked; raises UnsafeUrlError if any is
        refused (a name with one private address among public ones is refused outright).
        """
        literal = _literal(host)
        if literal is not None:
            addresses = [literal]
        else:
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except socket.gaierror as exc:
                raise OSError(f"cannot resolve {host}: {exc.strerror}") from exc
            addresses = list(
                dict.fromkeys(
                    ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos
                )
            )
        for address in addresses:
            self.check_address(address, host)
        return addresses


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
