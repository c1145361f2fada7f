"""``network: {cluster: NAME}`` in pool profiles: what it builds and each mistake at its line and field."""
from __future__ import annotations

import textwrap

import pytest

import engine
from tests.profile.test_profile_network import _issues, _parse


def _network(lines: str) -> str:
    return "name: a\npool: {size: 1, max_size: 2}\nnetwork:\n" + textwrap.indent(textwrap.dedent(lines), "  ")


def test_a_cluster_key_alone_means_user_nat_in_that_cluster() -> None:
    net = _parse(_network("cluster: backend\n")).network
    assert isinstance(net, engine.UserNatConfig)
    assert net == engine.NetworkMode.cluster("backend").build()


def test_a_cluster_with_user_nat_settings_and_a_policy() -> None:
    net = _parse(_network("""\
        mode: user_nat
        cluster: db.tier_1
        subnet: 10.0.7.0/24
        policy: {default: deny, rules: [{action: allow, domain: deb.debian.org}]}
        """)).network
    assert isinstance(net, engine.UserNatConfig)
    assert (net.cluster, str(net.subnet), net.policy.default.value) == ("db.tier_1", "10.0.7.0/24", "deny")


def test_no_cluster_key_is_no_cluster() -> None:
    net = _parse(_network("mode: user_nat\n")).network
    assert isinstance(net, engine.UserNatConfig) and net.cluster is None


def test_the_summary_names_the_cluster() -> None:
    summary = _parse(_network("cluster: backend\n")).to_dict()["network"]
    assert isinstance(summary, dict)
    assert summary["mode"] == "user_nat" and summary["cluster"] == "backend"
    plain = _parse(_network("mode: user_nat\n")).to_dict()["network"]
    assert isinstance(plain, dict) and "cluster" not in plain


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ("cluster: 'a b'\n",
         "4: network.cluster: expected a cluster name (1-63 letters, digits, '.', '_' or '-'), found string 'a b'"),
        ("cluster: 7\n",
         "4: network.cluster: expected a cluster name (1-63 letters, digits, '.', '_' or '-'), found integer 7"),
        ("cluster: [a]\n",
         "4: network.cluster: expected a cluster name (1-63 letters, digits, '.', '_' or '-'), found a list"),
        ("mode: none\ncluster: a\n",
         "5: network.cluster: expected no cluster with mode none (no network card), or mode user_nat"),
        ("clustr: a\nmode: user_nat\n", "4: network.clustr: unknown key (did you mean 'cluster'?)"),
    ],
)
def test_each_cluster_mistake_names_line_and_field(lines: str, expected: str) -> None:
    assert "\n".join(_issues(_network(lines))) == f"web.yaml:{expected}"


def test_the_pool_builder_carries_the_cluster(fake_guest: engine.LinuxDirectBoot) -> None:
    spec = _parse(_network("cluster: backend\n")).pool_builder().spec()
    assert isinstance(spec.network, engine.UserNatConfig) and spec.network.cluster == "backend"
