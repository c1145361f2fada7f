"""The ``network:`` section of pool profiles: user-mode NAT settings, forwards, static hosts and
the policy, every mistake at its file, line and field, and saving a policy back with comments.

No test here boots a VM: configs are checked as the builders and specs carry them.
"""
from __future__ import annotations

import json
import re
import textwrap
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

import engine
import engine.profile.parse
from engine.netstack.policy.policy import Flow, MatchCriteria, Rule

BUNDLED = Path(__file__).resolve().parents[2] / "profiles"

FULL = """\
name: web
pool: {size: 1, max_size: 1}
network:
  mode: user_nat          # required when a mapping
  subnet: 10.0.3.0/24
  mtu: 1400
  dns_upstream: [127.0.0.1:5353, 1.1.1.1]
  hosts:
    API.example.test.: 127.0.0.1
    db.test: 10.0.3.9
  forwards:
    - {protocol: tcp, host_port: 8080, guest_port: 80}
    - udp 5353:53
    - {protocol: TCP, host_port: 2222, guest_port: 22, host_addr: 0.0.0.0}
    - tcp 192.168.1.5:0:443
  policy:
    default: deny
    rules:
      - {action: allow, domain: "*.github.com"}
      - {action: allow, protocol: tcp, port: 443}
      - {action: log, any: true}
"""


def _parse(text: str) -> engine.Profile:
    return engine.parse_profile(textwrap.dedent(text), "web.yaml")


def _issues(text: str) -> list[str]:
    with pytest.raises(engine.ProfileError) as caught:
        _parse(text)
    return [str(issue) for issue in caught.value.errors]


def _network(lines: str, pool: str = "pool: {size: 1, max_size: 1}") -> str:
    """A profile whose network section is ``lines`` (indented under ``network:``), from line 4."""
    return f"name: a\n{pool}\nnetwork:\n" + textwrap.indent(textwrap.dedent(lines), "  ")






# -- the good cases -----------------------------------------------------------------------------


def test_the_full_example_builds_a_user_nat_config() -> None:
    net = _parse(FULL).network
    assert isinstance(net, engine.UserNatConfig)
    assert (net.subnet, net.mtu) == (IPv4Network("10.0.3.0/24"), 1400)
    assert net.dns_upstream == (("127.0.0.1", 5353), ("1.1.1.1", 53))
    assert net.hosts == (("api.example.test", IPv4Address("127.0.0.1")), ("db.test", IPv4Address("10.0.3.9")))
    assert net.forwards == (
        engine.PortForward("tcp", 8080, 80),
        engine.PortForward("udp", 5353, 53),
        engine.PortForward("tcp", 2222, 22, "0.0.0.0"),
        engine.PortForward("tcp", 0, 443, "192.168.1.5"),
    )
    assert net.policy == (engine.NetworkPolicy.deny_all().allow_domain("*.github.com")
                          .allow_tcp_port(443).log(MatchCriteria.any()))
    # the same config the builder API gives (and it validates)
    built = (engine.NetworkMode.user_nat().subnet("10.0.3.0/24").mtu(1400).dns_upstream("127.0.0.1:5353", "1.1.1.1")
             .host("api.example.test", "127.0.0.1").host("db.test", "10.0.3.9")
             .forward_tcp(8080, 80).forward_udp(5353, 53).forward_tcp(2222, 22, "0.0.0.0").forward_tcp(0, 443, "192.168.1.5")
             .policy(net.policy).build())
    assert net == built


def test_the_builders_carry_the_network(fake_guest: engine.LinuxDirectBoot) -> None:
    profile = _parse(FULL)
    assert profile.vm_builder().spec().network is profile.network
    assert profile.pool_builder().spec().network is profile.network
    assert _parse("name: a\n").vm_builder().spec().network == engine.NoNetwork()


def test_to_dict_summarises_the_network_as_json() -> None:
    summary = _parse(FULL).to_dict()["network"]
    assert json.loads(json.dumps(summary)) == summary
    assert summary == {
        "mode": "user_nat",
        "subnet": "10.0.3.0/24",
        "mtu": 1400,
        "dns_upstream": ["127.0.0.1:5353", "1.1.1.1:53"],
        "hosts": {"api.example.test": "127.0.0.1", "db.test": "10.0.3.9"},
        "forwards": [
            {"protocol": "tcp", "host_addr": "127.0.0.1", "host_port": 8080, "guest_port": 80},
            {"protocol": "udp", "host_addr": "127.0.0.1", "host_port": 5353, "guest_port": 53},
            {"protocol": "tcp", "host_addr": "0.0.0.0", "host_port": 2222, "guest_port": 22},
            {"protocol": "tcp", "host_addr": "192.168.1.5", "host_port": 0, "guest_port": 443},
        ],
        "policy": {"default": "deny", "rules": 3},
    }
    assert _parse("name: a\n").to_dict()["network"] == {"mode": "none"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("network: none", engine.NoNetwork()),
        ("network: {mode: none}", engine.NoNetwork()),
        ("network: user_nat", engine.UserNatConfig()),  # every default: allow public addresses
        ("network: {mode: user_nat}", engine.UserNatConfig()),
        ("network: {mode: user_nat, dns_upstream: 9.9.9.9}", engine.UserNatConfig(dns_upstream=(("9.9.9.9", 53),))),
        ("network: {mode: user_nat, policy: {rules: []}}", engine.UserNatConfig(policy=engine.NetworkPolicy.deny_all())),
    ],
)
def test_short_forms(text: str, expected: object) -> None:
    assert _parse(f"name: a\n{text}\n").network == expected


def test_a_pool_of_several_vms_forwards_from_any_free_port() -> None:
    text = _network("mode: user_nat\nforwards: [tcp 0:80, {protocol: udp, host_port: 0, guest_port: 53}]\n", "pool: {max_size: 4}")
    net = _parse(text).network
    assert isinstance(net, engine.UserNatConfig)
    assert [(f.protocol, f.host_port, f.guest_port) for f in net.forwards] == [("tcp", 0, 80), ("udp", 0, 53)]


# -- every kind of error, at its line and field ---------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        # mode
        ("mode: nat\n", "4: network.mode: expected 'none' or 'user_nat', found string 'nat' (did you mean 'user_nat'?)"),
        ("mode: User_NAT\n", "4: network.mode: expected 'none' or 'user_nat', found string 'User_NAT' (did you mean 'user_nat'?)"),
        ("subnet: 10.0.2.0/24\n", "4: network.mode: missing: expected 'none' or 'user_nat'"),
        ("mode: none\nforwards: [tcp 1:1]\n", "5: network.forwards: expected no forwards with mode none (no network card), or mode user_nat"),
        # subnet and mtu
        ("mode: user_nat\nsubnet: 10.0.2.1/24\n",
         "5: network.subnet: expected a private IPv4 network in CIDR form, /27 or larger, such as 10.0.2.0/24, "
         "found string '10.0.2.1/24' (host bits set; did you mean 10.0.2.0/24?)"),
        ("mode: user_nat\nsubnet: 10.0.2.0\n",
         "5: network.subnet: expected a private IPv4 network in CIDR form, /27 or larger, such as 10.0.2.0/24, found string '10.0.2.0'"),
        ("mode: user_nat\nsubnet: 10.0.2.0/28\n",
         "5: network.subnet: expected a /27 or larger network (the guest's address is .15), found string '10.0.2.0/28'"),
        ("mode: user_nat\nsubnet: 8.8.0.0/16\n",
         "5: network.subnet: expected a private network (in 10/8, 172.16/12 or 192.168/16), found string '8.8.0.0/16'"),
        ("mode: user_nat\nsubnet: 127.0.0.0/24\n",
         "5: network.subnet: expected a private network (in 10/8, 172.16/12 or 192.168/16), found string '127.0.0.0/24'"),
        ("mode: user_nat\nmtu: 9999999\n", "5: network.mtu: expected an integer from 576 to 65520, found integer 9999999"),
        # DNS upstream
        ("mode: user_nat\ndns_upstream:\n  - 1.1.1.1\n  - 1.1.1.1:99999\n",
         "7: network.dns_upstream[1]: expected a resolver address such as 1.1.1.1 or 127.0.0.1:5353, found string '1.1.1.1:99999'"),
        ("mode: user_nat\ndns_upstream: []\n",
         "5: network.dns_upstream: expected at least one resolver (leave dns_upstream out for the host's), found an empty list"),
        # hosts
        ("mode: user_nat\nhosts:\n  api.test: 127.0.0.1\n  db.test: 10.0.0.256\n",
         "7: network.hosts.db.test: expected an IPv4 address such as 127.0.0.1, found string '10.0.0.256'"),
        ("mode: user_nat\nhosts:\n  '*.test': 127.0.0.1\n",
         "6: network.hosts.*.test: expected a host name such as api.example.test, found string '*.test' "
         "('*' is only allowed as the whole first label ('*.example.com'))"),
        ("mode: user_nat\nhosts:\n  a.test: 127.0.0.1\n  A.test.: 127.0.0.2\n",
         "7: network.hosts.A.test.: expected each host once, found 'a.test' again (also 'a.test')"),
        ("mode: user_nat\nhosts: [a.test]\n", "5: network.hosts: expected a mapping, found a list"),
        # forwards
        ("mode: user_nat\nforwards: {tcp: 80}\n",
         "5: network.forwards: expected a list of forwards, each a mapping with protocol, host_port and guest_port, "
         "or 'PROTO [HOST_ADDR:]HOST_PORT:GUEST_PORT' such as 'tcp 8080:80', found a mapping"),
        ("mode: user_nat\nforwards:\n  - tcp 8080:80\n  - tcp 80\n",
         "7: network.forwards[1]: expected a mapping with protocol, host_port and guest_port, "
         "or 'PROTO [HOST_ADDR:]HOST_PORT:GUEST_PORT' such as 'tcp 8080:80', found string 'tcp 80'"),
        ("mode: user_nat\nforwards:\n  - udp 1.2.3:70000:0\n",
         "6: network.forwards[0]: expected a mapping with protocol, host_port and guest_port, "
         "or 'PROTO [HOST_ADDR:]HOST_PORT:GUEST_PORT' such as 'tcp 8080:80', found string 'udp 1.2.3:70000:0' "
         "(host address '1.2.3' is no IPv4 address; host port '70000' is not 0 (any free port) to 65535; "
         "guest port '0' is not 1 to 65535)"),
        ("mode: user_nat\nforwards:\n  - protocol: sctp\n    host_port: 1\n    guest_port: 2\n",
         "6: network.forwards[0].protocol: expected tcp or udp, found string 'sctp'"),
        ("mode: user_nat\nforwards:\n  - protocol: tcp\n    host_port: 1\n",
         "6: network.forwards[0].guest_port: missing: expected the guest's port"),
        ("mode: user_nat\nforwards:\n  - {protocol: tcp, host_port: 1, guest_port: 2, host_addr: localhost}\n",
         "6: network.forwards[0].host_addr: expected an IPv4 address such as 127.0.0.1 (all interfaces: 0.0.0.0), found string 'localhost'"),
        ("mode: user_nat\nforwards:\n  - {protocol: tcp, host_port: 1, guest_port: 2}\n  - {protocol: tcp, hostport: 3, guest_port: 4}\n",
         "7: network.forwards[1].hostport: unknown key (did you mean 'host_port'?)\n"
         "web.yaml:7: network.forwards[1].host_port: missing: expected the host port, 0 for any free port"),
        ("mode: user_nat\nforwards:\n  - [tcp, 1, 2]\n",
         "6: network.forwards[0]: expected a mapping with protocol, host_port and guest_port, "
         "or 'PROTO [HOST_ADDR:]HOST_PORT:GUEST_PORT' such as 'tcp 8080:80', found a list"),
        # the DHCP range
        ("mode: user_nat\ndhcp_start: ten\n",
         "5: network.dhcp_start: expected an IPv4 address of the subnet such as 10.0.2.15, found string 'ten'"),
        ("mode: user_nat\nsubnet: 10.0.3.0/24\ndhcp_end: 10.0.2.20\n",
         "6: network.dhcp_end: expected a range of the subnet's host addresses without the gateway's and DNS's "
         "(10.0.2.20 is not a host address of the subnet 10.0.3.0/24)"),
        ("mode: user_nat\ndhcp_start: 10.0.2.50\ndhcp_end: 10.0.2.40\n",
         "6: network.dhcp_end: expected a range of the subnet's host addresses without the gateway's and DNS's "
         "(the range ends at 10.0.2.40, before its start 10.0.2.50)"),
        ("mode: user_nat\ndhcp_start: 10.0.2.3\n",
         "5: network.dhcp_start: expected a range of the subnet's host addresses without the gateway's and DNS's "
         "(the range 10.0.2.3-10.0.2.254 holds the DNS server's address 10.0.2.3)"),
        ("mode: user_nat\ndhcp_end: 10.0.2.2\n",
         "5: network.dhcp_end: expected a range of the subnet's host addresses without the gateway's and DNS's "
         "(the range ends at 10.0.2.2, before its start 10.0.2.15)"),
        # unknown keys
        ("mode: user_nat\nforward: []\n", "5: network.forward: unknown key (did you mean 'forwards'?)"),
        ("mode: user_nat\npolcy: {}\n", "5: network.polcy: unknown key (did you mean 'policy'?)"),
    ],
)
def test_each_network_mistake_names_line_and_field(lines: str, expected: str) -> None:
    assert "\n".join(_issues(_network(lines))) == f"web.yaml:{expected}"


def test_the_dhcp_range_reaches_the_config() -> None:
    net = _parse(_network("mode: user_nat\nsubnet: 10.0.3.0/24\ndhcp_start: 10.0.3.100\ndhcp_end: 10.0.3.120\n")).network
    assert isinstance(net, engine.UserNatConfig)
    assert net.dhcp_range == (IPv4Address("10.0.3.100"), IPv4Address("10.0.3.120"))
    only_end = _parse(_network("mode: user_nat\ndhcp_end: 10.0.2.20\n")).network
    assert isinstance(only_end, engine.UserNatConfig)
    assert only_end.dhcp_range == (IPv4Address("10.0.2.15"), IPv4Address("10.0.2.20"))
    default = _parse(_network("mode: user_nat\n")).network
    assert isinstance(default, engine.UserNatConfig)
    assert (default.dhcp_start, default.dhcp_end) == (None, None)


def test_a_host_port_forwarded_twice_names_both_lines() -> None:
    text = _network("""\
        mode: user_nat
        forwards:
          - {protocol: tcp, host_port: 8080, guest_port: 80}
          - {protocol: udp, host_port: 8080, guest_port: 80}    # another protocol: fine
          - {protocol: tcp, host_port: 9090, guest_port: 80}    # another host port: fine
          - tcp 8080:81
          - {protocol: tcp, host_port: 9090, guest_port: 22, host_addr: 0.0.0.0}
          - tcp 10.0.0.1:7070:1
          - tcp 10.0.0.2:7070:1                                 # another address: fine
        """)
    assert _issues(text) == [
        "web.yaml:9: network.forwards[3]: expected a host port not forwarded already, "
        "found tcp 127.0.0.1:8080 (also forwarded by forwards[0], line 6)",
        "web.yaml:10: network.forwards[4].host_port: expected a host port not forwarded already, "
        "found tcp 0.0.0.0:9090 (also forwarded by forwards[2], line 8)",
    ]


def test_a_fixed_host_port_needs_a_pool_of_one_vm() -> None:
    text = _network("mode: user_nat\nforwards:\n  - tcp 0:80\n  - {protocol: tcp, host_port: 8080, guest_port: 80}\n",
                    "pool: {size: 1, max_size: 2}")
    assert _issues(text) == [
        "web.yaml:7: network.forwards[1].host_port: expected host port 0 (any free port) in a pool of up to 2 VMs, "
        "found 8080: a host port can belong to one VM only (or set pool.max_size: 1)"
    ]


def test_a_bad_rule_deep_inside_the_policy_is_reported_at_its_own_line() -> None:
    text = _network("""\
        mode: user_nat
        policy:
          default: deny
          rules:
            - {action: allow, protocol: udp, port: 53}
            - action: allow
              domain: "*.debian.org"
            - action: allow
              all:
                - {protocol: tcp}
                - port: 80
                  port_range: 8000-8100
                - port: 70000
        """)
    assert _issues(text) == [
        "web.yaml:16: network.policy.rules[2].all[2].port: expected a port number 1-65535, found 70000"
    ]


def test_every_bad_rule_is_reported_and_the_rest_of_the_policy_too() -> None:
    text = _network("""\
        mode: user_nat
        policy:
          default: maybe
          rules:
            - {action: allow, port: 443}
            - {action: permit, any: true}
            - {action: allow}
            - {action: allow, protcol: tcp}
            - action: deny
              ip_range: 10.0.0.1/8
          colour: red
        """)
    assert _issues(text) == [
        "web.yaml:6: network.policy.default: expected allow or deny, found 'maybe'",
        "web.yaml:9: network.policy.rules[1].action: expected allow, deny or log, found 'permit'",
        "web.yaml:10: network.policy.rules[2]: the rule has no criteria (write 'any: true' to match all traffic)",
        "web.yaml:11: network.policy.rules[3].protcol: unknown criterion 'protcol'; did you mean 'protocol'?",
        "web.yaml:13: network.policy.rules[4].ip_range: '10.0.0.1/8' has host bits set; did you mean 10.0.0.0/8?",
        "web.yaml:14: network.policy.colour: unknown key 'colour' (a policy has 'default', 'rules' and 'require_names')",
    ]


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ("mode: user_nat\npolicy: deny\n", "5: network.policy: expected a mapping, found string 'deny'"),
        ("mode: user_nat\npolicy:\n  rules: allow all\n", "6: network.policy.rules: expected a list of rules, found 'allow all'"),
        ("mode: user_nat\npolicy:\n  rules:\n    - allow all\n",
         "7: network.policy.rules[0]: a rule is a mapping with 'action' and criteria, found 'allow all'"),
        ("mode: user_nat\npolicy:\n  rules:\n    - {port: 80}\n", "7: network.policy.rules[0]: the rule has no 'action' (allow, deny or log)"),
    ],
)
def test_policy_shape_mistakes(lines: str, expected: str) -> None:
    assert _issues(_network(lines)) == [f"web.yaml:{expected}"]


def test_every_network_mistake_comes_out_at_once_in_line_order() -> None:
    text = _network("""\
        mode: user_nat
        subnet: 10.0.2.0/30
        mtu: big
        hosts: {a.test: x}
        forwards: [tcp 1:0]
        policy: {rules: [{action: allow, port: 0}]}
        extra: 1
        """)
    fields = [issue.split(": ")[1] for issue in _issues(text)]
    assert fields == ["network.subnet", "network.mtu", "network.hosts.a.test", "network.forwards[0]",
                      "network.policy.rules[0].port", "network.extra"]


# -- the bundled profiles and the documentation --------------------------------------------------


def test_the_bundled_web_profile_allows_dns_https_and_debian_only(fake_guest: engine.LinuxDirectBoot) -> None:
    profile = engine.load_profile(BUNDLED / "web.yaml")
    assert (profile.name, profile.size, profile.max_size) == ("web", 1, 2)
    assert "DNS" in profile.description and "HTTPS" in profile.description
    net = profile.network
    assert isinstance(net, engine.UserNatConfig)
    policy = net.policy
    assert policy == engine.NetworkPolicy.deny_all().allow_dns().allow_https().allow_domain("*.debian.org")
    public = "151.101.2.132"
    assert policy.evaluate(Flow(engine.Protocol.UDP, public, 53)).allowed
    assert policy.evaluate(Flow(engine.Protocol.TCP, public, 443)).allowed
    assert policy.evaluate(Flow(engine.Protocol.TCP, public, 80, domains=frozenset({"deb.debian.org"}))).allowed
    assert not policy.evaluate(Flow(engine.Protocol.TCP, public, 80, domains=frozenset({"example.com"}))).allowed
    assert profile.pool_builder().spec().network == net


def test_the_bundled_profiles_all_load(user_dir: Path, fake_guest: engine.LinuxDirectBoot) -> None:
    profiles = {p.name: p for p in engine.load_profiles()}
    assert {path.stem for path in BUNDLED.glob("*.yaml")} <= set(profiles)
    for profile in profiles.values():
        profile.vm_builder().spec()
        json.dumps(profile.to_dict())


def test_the_network_example_in_default_yaml_is_valid() -> None:
    """The commented-out example in default.yaml, uncommented, parses (so the docs stay true)."""
    lines = (BUNDLED / "default.yaml").read_text().splitlines()
    start = lines.index("#   network:")
    block = []
    for line in lines[start:]:
        if not line.startswith("#   "):
            break
        block.append(line[4:])
    assert len(block) > 15
    text = "name: doc\npool: {size: 1, max_size: 1}\n" + "\n".join(block) + "\n"
    net = engine.parse_profile(text, "default.yaml").network
    assert isinstance(net, engine.UserNatConfig)
    assert len(net.forwards) == 2 and len(net.policy.rules) == 6 and net.hosts


# -- saving a policy back, with the comments ------------------------------------------------------

COMMENTED = """\
# A closed pool.
name: closed
network:
  mode: user_nat   # NAT through the gateway
  policy:
    # what the guest may reach
    default: deny   # closed by default
    rules:
      - {action: allow, protocol: udp, port: 53}    # DNS
      # then HTTPS
      - action: allow
        protocol: tcp   # TCP only
        port: 443
      - {action: allow, domain: "*.debian.org"}     # mirrors

# pool sizing
pool:
  size: 1
  max_size: 1
"""


def _save_policy(path: Path, policy: engine.NetworkPolicy | None) -> engine.Profile:
    return engine.save_profile(path, {"network.policy": None if policy is None else policy.to_dict()})


def _policy_of(profile: engine.Profile) -> engine.NetworkPolicy:
    assert isinstance(profile.network, engine.UserNatConfig)
    return profile.network.policy


def test_saving_the_same_policy_changes_nothing(tmp_path: Path) -> None:
    for text in (COMMENTED, (BUNDLED / "web.yaml").read_text()):
        path = tmp_path / "p.yaml"
        path.write_text(text)
        _save_policy(path, _policy_of(engine.load_profile(path)))
        assert path.read_text() == text


def test_saving_an_edited_policy_keeps_the_comments(tmp_path: Path) -> None:
    path = tmp_path / "closed.yaml"
    path.write_text(COMMENTED)
    policy = _policy_of(engine.load_profile(path))
    edited = policy.allow_domain("*.example.org").with_default(engine.PolicyAction.DENY)
    saved = _save_policy(path, edited)
    assert _policy_of(saved) == edited and engine.load_profile(path) == saved
    text = path.read_text()
    assert text.startswith(COMMENTED.split("\n# pool sizing")[0].rstrip("\n"))  # all that was, comments included
    assert re.search(r"      - {action: allow, domain: \"\*\.debian\.org\"}     # mirrors\n"
                     r"      - action: allow\n        domain: '\*\.example\.org'\n\n# pool sizing\npool:\n", text)


def test_moving_and_removing_rules_keeps_each_rules_comment_and_what_follows(tmp_path: Path) -> None:
    path = tmp_path / "closed.yaml"
    path.write_text(COMMENTED)
    policy = _policy_of(engine.load_profile(path))
    edited = policy.move_rule(2, 0).without_rule(2).replace_rule(1, Rule(engine.PolicyAction.ALLOW, MatchCriteria.all(
        MatchCriteria.protocol("udp"), MatchCriteria.port(5353))))
    _save_policy(path, edited)
    assert path.read_text() == COMMENTED.replace(
        """\
      - {action: allow, protocol: udp, port: 53}    # DNS
      # then HTTPS
      - action: allow
        protocol: tcp   # TCP only
        port: 443
      - {action: allow, domain: "*.debian.org"}     # mirrors
""",
        """\
      - {action: allow, domain: "*.debian.org"}     # mirrors
      - {action: allow, protocol: udp, port: 5353}  # DNS
      # then HTTPS
""")
    assert _policy_of(engine.load_profile(path)) == edited


def test_removing_the_policy_keeps_the_comment_after_it(tmp_path: Path) -> None:
    path = tmp_path / "closed.yaml"
    path.write_text(COMMENTED)
    saved = _save_policy(path, None)
    assert _policy_of(saved) == engine.NetworkPolicy.allow_all()  # UserNatConfig's default
    assert path.read_text() == "# A closed pool.\nname: closed\nnetwork:\n  mode: user_nat   # NAT through the gateway\n" \
        + COMMENTED[COMMENTED.index("\n# pool sizing"):]


def test_a_policy_can_be_added_to_a_profile_without_one(tmp_path: Path) -> None:
    path = tmp_path / "open.yaml"
    path.write_text("name: open\n# the network\nnetwork: none   # for now\n\n# sizing\npool: {size: 1, max_size: 1}\n")
    policy = engine.NetworkPolicy.deny_all().allow_https()
    saved = engine.save_profile(path, {"network.mode": "user_nat", "network.policy": policy.to_dict()})
    assert _policy_of(saved) == policy
    text = path.read_text()
    assert "# the network\n" in text and "# sizing\npool: {size: 1, max_size: 1}\n" in text
    assert engine.load_profile(path) == saved


def test_an_invalid_policy_is_not_saved_and_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "closed.yaml"
    path.write_text(COMMENTED)
    bad = {"default": "deny", "rules": [{"action": "allow", "protocol": "udp", "port": 53}, {"action": "allow", "port": 0}]}
    with pytest.raises(engine.ProfileError) as caught:
        engine.save_profile(path, {"network.policy": bad})
    (issue,) = caught.value.errors
    assert str(issue).startswith(f"{path}:12: network.policy.rules[1].port: expected a port number 1-65535")
    assert path.read_text() == COMMENTED


def test_saving_the_bundled_web_policy_writes_a_user_copy_with_its_comments(user_dir: Path) -> None:
    web = engine.find_profile("web")
    policy = _policy_of(web).deny_domain("*.evil.test")
    saved = engine.save_profile(web, {"network.policy": policy.to_dict()})
    assert (saved.source, saved.path) == ("user", user_dir / "web.yaml")
    assert _policy_of(engine.find_profile("web")) == policy
    text = (user_dir / "web.yaml").read_text()
    assert "# any port of Debian's hosts" in text and "# VMs on a closed network" in text
    assert '      - {action: deny, domain: "*.evil.test"}\n' in text or "      - {action: deny, domain: '*.evil.test'}\n" in text


def test_require_names_in_yaml_round_trip_and_errors(tmp_path: Path) -> None:
    on = _parse(_network("mode: user_nat\npolicy: {default: deny, rules: [{action: allow, domain: a.test}]}\n"))
    assert isinstance(on.network, engine.UserNatConfig) and on.network.policy.require_names is True
    off = _parse(_network("mode: user_nat\npolicy:\n  default: deny\n  require_names: false\n"))
    assert isinstance(off.network, engine.UserNatConfig) and off.network.policy.require_names is False
    assert _issues(_network("mode: user_nat\npolicy:\n  default: deny\n  require_names: maybe\n")) == [
        "web.yaml:7: network.policy.require_names: expected true or false, found 'maybe'"]
    path = tmp_path / "p.yaml"
    path.write_text(COMMENTED, encoding="utf-8")
    saved = _save_policy(path, _policy_of(engine.load_profile(path)).with_require_names(False))
    assert _policy_of(saved).require_names is False
    text = path.read_text(encoding="utf-8")
    assert "require_names: false" in text and "# mirrors" in text, text
    assert _policy_of(_save_policy(path, _policy_of(saved).with_require_names(True))).require_names is True
    assert "require_names" not in path.read_text(encoding="utf-8")
