"""Outgoing-request guard: only http(s) to public addresses, unless an allow-list says otherwise.

Webhooks and callbacks POST to URLs that clients choose. Without this guard a client could make
the platform reach its own Redis, the cluster's internal services or the cloud metadata
endpoint (SSRF). Names are resolved and every address checked; the connection then goes to a
checked address (with the original Host and TLS server name), so a DNS answer that changes
between the check and the connection (rebinding) cannot slip through.

The policy is explicit rather than `is_global` alone (which calls site-local `fec0::/10` and
IPv4-translated `::ffff:0:0:0/96` global):

- IPv4: `is_global`, minus the special-purpose ranges in `_IPV4_REFUSED` (which also name the
  reason a refusal is logged with).
- IPv6: only global unicast `2000::/3`, minus the special-purpose ranges in `_IPV6_REFUSED`
  (Teredo, the rest of `2001::/23`, documentation).
- IPv6 forms that reach an IPv4 address are judged by that address: IPv4-mapped
  (`::ffff:0:0/96`), NAT64's well-known prefix (`64:ff9b::/96`) and 6to4 (`2002::/16`).
  Other carriers are refused outright: IPv4-compatible (`::/96`, deprecated), IPv4-translated
  (`::ffff:0:0:0/96`), local-use NAT64 (`64:ff9b:1::/48`) and Teredo (`2001::/32`).
- `allowed_networks` overrides all of it, for the address and for the IPv4 address it carries.

A refusal's message is what the client reads (the job's error, or a 422), so it never says
what a name resolved to: that would make the platform a DNS oracle for the cluster's private
names. The address and the reason are attributes of the exception, for the worker's log.
"""

import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOWED_SCHEMES = frozenset({"http", "https"})

REFUSED_MESSAGE = "destination refused by the platform's outbound policy (non-public address)"


class UnsafeUrlError(ValueError):
    """A URL the platform refuses to reach; the message is safe to show the client."""


class RefusedAddressError(UnsafeUrlError):
    """`host` is, or resolves to, `address`, which the policy refuses for `reason`.

    The message names the host (the client's own input) but neither the address nor the
    reason: those are for the log.
    """

    def __init__(self, host: str, address: IPAddress, reason: str) -> None:
        super().__init__(f"{host}: {REFUSED_MESSAGE}")
        self.host = host
        self.address = address
        self.reason = reason


class UnresolvableHostError(OSError):
    """`host` did not resolve. Retryable (DNS fails transiently too); the message names the
    host only, and `detail` (the resolver's own words) is for the log.
    """

    def __init__(self, host: str, detail: str) -> None:
        super().__init__(f"cannot resolve {host}")
        self.host = host
        self.detail = detail


def _networks(*entries: tuple[str, str]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ipaddress.ip_network(cidr), reason) for cidr, reason in entries)


# Refused although `is_global` may say otherwise (multicast, 192.0.0.9, 192.88.99.0/24 are
# "global" to Python 3.11), or whatever Python's own tables hold: IANA IPv4 special-purpose
# registry, plus multicast.
_IPV4_REFUSED = _networks(
    ("0.0.0.0/8", "'this network' (RFC 791)"),
    ("10.0.0.0/8", "private (RFC 1918)"),
    ("100.64.0.0/10", "shared address space, CGNAT (RFC 6598)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local (the cloud metadata endpoint)"),
    ("172.16.0.0/12", "private (RFC 1918)"),
    ("192.0.0.0/24", "IETF protocol assignments (RFC 6890)"),
    ("192.0.2.0/24", "documentation (RFC 5737)"),
    ("192.88.99.0/24", "6to4 relay anycast (deprecated, RFC 7526)"),
    ("192.168.0.0/16", "private (RFC 1918)"),
    ("198.18.0.0/15", "benchmarking (RFC 2544)"),
    ("198.51.100.0/24", "documentation (RFC 5737)"),
    ("203.0.113.0/24", "documentation (RFC 5737)"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved (RFC 1112), with the broadcast address"),
)

_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")

# Inside 2000::/3 but refused: IANA IPv6 special-purpose registry. All of 2001::/23 is
# refused, the few anycast services in it that IANA calls globally reachable (PCP, TURN,
# AMT, AS112) included: no webhook receiver lives there. First match names the reason.
_IPV6_REFUSED = _networks(
    ("2001::/32", "Teredo (RFC 4380)"),
    ("2001:db8::/32", "documentation (RFC 3849)"),
    ("2001::/23", "IETF protocol assignments: benchmarking, ORCHID, anycast (RFC 2928)"),
    ("3fff::/20", "documentation (RFC 9637)"),
)

# Outside 2000::/3: refused anyway; this table only names the reason for the log.
_IPV6_OUTSIDE = _networks(
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::/96", "IPv4-compatible (deprecated, RFC 4291)"),
    ("::ffff:0:0:0/96", "IPv4-translated (RFC 2765)"),
    ("64:ff9b:1::/48", "local-use NAT64 (RFC 8215)"),
    ("100::/64", "discard-only (RFC 6666)"),
    ("fc00::/7", "unique local (RFC 4193)"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local (deprecated, RFC 3879)"),
    ("ff00::/8", "multicast"),
)

_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")


@dataclass(frozen=True)
class NetGuard:
    """The policy: public addresses, plus `allowed_networks`."""

    allowed_networks: Sequence[IPNetwork] = ()

    def check_address(self, address: IPAddress, host: str) -> None:
        """Raise RefusedAddressError unless `address` is public or allow-listed."""
        reason = self.refusal(address)
        if reason is not None:
            raise RefusedAddressError(host, address, reason)

    def refusal(self, address: IPAddress) -> str | None:
        """Why the policy refuses `address`, or None when it may be reached."""
        if any(address in network for network in self.allowed_networks):
            return None
        form, embedded = _embedded_ipv4(address)
        if embedded is not None:
            inner = self.refusal(embedded)
            return None if inner is None else f"{form} carrying {embedded}, {inner}"
        return _policy_refusal(address)

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
        """Every address `host` resolves to, each checked; raises RefusedAddressError if any
        is refused (a name with one private address among public ones is refused outright),
        UnresolvableHostError if it does not resolve.
        """
        literal = _literal(host)
        if literal is not None:
            addresses = [literal]
        else:
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except socket.gaierror as exc:
                raise UnresolvableHostError(host, str(exc.strerror)) from exc
            addresses = list(
                dict.fromkeys(
                    ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos
                )
            )
        for address in addresses:
            self.check_address(address, host)
        return addresses


def _policy_refusal(address: IPAddress) -> str | None:
    """The fixed policy (no allow-list, no embedded address): a reason, or None."""
    if isinstance(address, ipaddress.IPv4Address):
        table = _IPV4_REFUSED
    elif address not in _GLOBAL_UNICAST:
        reason = _first_match(address, _IPV6_OUTSIDE)
        return reason or "outside global unicast 2000::/3"
    else:
        table = _IPV6_REFUSED
    reason = _first_match(address, table)
    if reason is None and not address.is_global:
        reason = "not globally reachable"
    return reason


def _first_match(address: IPAddress, table: tuple[tuple[IPNetwork, str], ...]) -> str | None:
    return next((reason for network, reason in table if address in network), None)


def _embedded_ipv4(address: IPAddress) -> tuple[str, ipaddress.IPv4Address | None]:
    """The IPv4 address an IPv6 address reaches (mapped, NAT64, 6to4), with the form's name;
    an empty name and None for any other address.
    """
    if not isinstance(address, ipaddress.IPv6Address):
        return "", None
    if address in _MAPPED:
        return "IPv4-mapped", ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _NAT64:
        return "NAT64", ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _SIX_TO_FOUR:
        return "6to4", ipaddress.IPv4Address((int(address) >> 80) & 0xFFFFFFFF)
    return "", None


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
