"""The rendered NetworkPolicies, evaluated: for every overlay, which pod accepts connections from whom and opens
connections to what, on which port. Pods come from the rendered workloads with the labels the Job controller
gives them (tests/k8s/network.py models the policy semantics), so a rule that looks right but selects the wrong
pods fails here."""

import pytest

from tests.k8s.manifests import OVERLAYS, render_overlay
from tests.k8s.network import (
    Endpoint,
    address,
    allowed,
    egress_allows,
    ingress_allows,
    network_policies,
    pods,
)

NAMESPACE = "catsdogs"
PROBE_PORTS = [(53, "UDP"), (53, "TCP"), (22, "TCP"), (80, "TCP"), (443, "TCP"), (988, "TCP"), (2222, "TCP"),
               (6006, "TCP"), (8080, "TCP")]
KUBE_DNS = Endpoint("kube-dns", "kube-system", {"k8s-app": "kube-dns"}, ports={"dns": 53, "dns-tcp": 53})
# Pods that are not the project's: another team's, a system pod, and one started by hand in the namespace.
OUTSIDERS = [Endpoint("web", "default", {"app": "web"}), KUBE_DNS,
             Endpoint("debug", NAMESPACE, {"run": "debug"})]
GOOGLE_APIS = [address("142.250.1.207"), address("2607:f8b0:4004:c07::cf")]  # storage.googleapis.com-like
INTERNAL = [address("10.8.0.10"), address("172.16.0.2"), address("192.168.4.7"), address("100.64.3.9")]
METADATA, METADATA_SERVER, NODE_LOCAL_DNS = address("169.254.169.254"), address("169.254.169.252"), \
    address("169.254.20.10")


def overlay_state(overlay):
    objects = render_overlay(overlay)
    return network_policies(objects), pods(objects)


def training_workers(objects) -> tuple[set, int | None]:
    """(names of the pods of the multi-worker training Job, the port TF_CONFIG gives them), independently of the
    policies: the Indexed Job's pods and its TF_CONFIG_PORT."""
    jobs = [o for o in objects if o["kind"] == "Job" and o["spec"].get("completionMode") == "Indexed"]
    if not jobs:
        return set(), None
    [job] = jobs
    [container] = job["spec"]["template"]["spec"]["containers"]
    port = int(next(e["value"] for e in container["env"] if e["name"] == "TF_CONFIG_PORT"))
    names = {f"{job['metadata']['name']}-{i}" for i in range(job["spec"]["completions"])}
    return names, port


def describe(violations) -> str:
    return "\n".join(violations[:20]) + (f"\n... {len(violations) - 20} more" if len(violations) > 20 else "")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_training_workers_accept_connections_and_only_from_each_other_on_their_port(overlay):
    objects = render_overlay(overlay)
    policies, ours = network_policies(objects), pods(objects)
    workers, worker_port = training_workers(objects)
    assert ours and policies
    violations = []
    for destination in ours:
        for source in ours + OUTSIDERS + GOOGLE_APIS + INTERNAL:
            if source == destination:
                continue
            for port, protocol in PROBE_PORTS:
                expected = (source.name in workers and destination.name in workers and port == worker_port
                            and protocol == "TCP")
                if ingress_allows(policies, source, destination, port, protocol) != expected:
                    violations.append(f"{destination.name} {'does not admit' if expected else 'admits'} "
                                      f"{source.name} on {port}/{protocol}")
    assert not violations, describe(violations)
    if overlay == "multinode":
        assert len(workers) >= 2


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_reach_each_other_only_as_training_workers(overlay):
    objects = render_overlay(overlay)
    policies, ours = network_policies(objects), pods(objects)
    workers, worker_port = training_workers(objects)
    reachable = {(s.name, d.name, port, protocol) for s in ours for d in ours if s != d
                 for port, protocol in PROBE_PORTS if allowed(policies, s, d, port, protocol)}
    expected = {(s, d, worker_port, "TCP") for s in workers for d in workers if s != d}
    assert reachable == expected


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_egress_is_dns_the_metadata_server_and_https_only(overlay):
    objects = render_overlay(overlay)
    policies, ours = network_policies(objects), pods(objects)
    workers, worker_port = training_workers(objects)
    expected = {
        KUBE_DNS.name: {(53, "UDP"), (53, "TCP")},
        NODE_LOCAL_DNS.name: {(53, "UDP"), (53, "TCP")},
        METADATA.name: {(53, "UDP"), (53, "TCP"), (80, "TCP")},  # Cloud DNS for GKE answers there too
        METADATA_SERVER.name: {(988, "TCP")},
        **{google.name: {(443, "TCP")} for google in GOOGLE_APIS},
        **{internal.name: set() for internal in INTERNAL},
        "web": set(), "debug": set(),
        "8.8.8.8": {(443, "TCP")},  # a public address: HTTPS only, so no DNS to outside resolvers
    }
    destinations = [KUBE_DNS, NODE_LOCAL_DNS, METADATA, METADATA_SERVER, *GOOGLE_APIS, *INTERNAL, *OUTSIDERS[:1],
                    OUTSIDERS[2], address("8.8.8.8")]
    for source in ours:
        for destination in destinations:
            opened = {(port, protocol) for port, protocol in PROBE_PORTS
                      if egress_allows(policies, source, destination, port, protocol)}
            assert opened == expected[destination.name], (source.name, destination.name)
        for destination in ours:
            if destination == source:
                continue
            opened = {(port, protocol) for port, protocol in PROBE_PORTS
                      if egress_allows(policies, source, destination, port, protocol)}
            both_workers = source.name in workers and destination.name in workers
            assert opened == ({(worker_port, "TCP")} if both_workers else set()), (source.name, destination.name)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_pod_that_is_not_ours_gets_no_traffic_at_all_in_the_namespace(overlay):
    """The namespace-wide deny covers pods the project does not define (kubectl run, a debug pod)."""
    policies, ours = overlay_state(overlay)
    stranger = Endpoint("debug", NAMESPACE, {"run": "debug"})
    for peer in ours + [KUBE_DNS, METADATA, *GOOGLE_APIS]:
        for port, protocol in PROBE_PORTS:
            assert not allowed(policies, stranger, peer, port, protocol), (peer.name, port, protocol)
            assert not allowed(policies, peer, stranger, port, protocol), (peer.name, port, protocol)


def test_the_policy_model_follows_the_kubernetes_rules():
    """The evaluator the tests above rely on, on small policies whose answers the API reference states."""
    web = Endpoint("web", "shop", {"app": "web"}, ports={"http": 8080})
    db = Endpoint("db", "shop", {"app": "db"})
    other = Endpoint("other", "elsewhere", {"app": "web"})

    def policy(spec, namespace="shop"):
        return {"kind": "NetworkPolicy", "metadata": {"name": "p", "namespace": namespace}, "spec": spec}

    assert allowed([], web, db, 5432)  # no policy: everything allowed
    deny_ingress = policy({"podSelector": {}})  # policyTypes default to Ingress only
    assert not allowed([deny_ingress], web, db, 5432) and allowed([deny_ingress], db, address("1.2.3.4"), 443)
    assert allowed([deny_ingress], db, other, 80)  # another namespace's pods are not selected
    from_web = policy({"podSelector": {"matchLabels": {"app": "db"}},
                       "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                                    "ports": [{"port": 5432}]}]})
    assert allowed([deny_ingress, from_web], web, db, 5432)
    assert not allowed([deny_ingress, from_web], web, db, 5433)
    assert not allowed([deny_ingress, from_web], web, db, 5432, "UDP")
    assert not allowed([deny_ingress, from_web], other, db, 5432)  # podSelector alone: same namespace only
    both = policy({"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "elsewhere"}},
         "podSelector": {"matchLabels": {"app": "web"}}}]}]})
    assert allowed([both], other, db, 1) and not allowed([both], web, db, 1)  # one peer: namespace AND pod
    either = policy({"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "elsewhere"}}},
        {"podSelector": {"matchLabels": {"app": "web"}}}]}]})
    assert allowed([either], other, db, 1) and allowed([either], web, db, 1)  # two peers: either
    named = policy({"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"ports": [{"port": "http"}]}]})
    assert allowed([named], db, web, 8080) and not allowed([named], db, web, 80)
    egress = policy({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"to": [
        {"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}], "ports": [{"port": 440, "endPort": 450}]}]})
    assert allowed([egress], web, address("8.8.8.8"), 443)
    assert not allowed([egress], web, address("10.1.1.1"), 443)  # excepted
    assert not allowed([egress], web, address("8.8.8.8"), 451)  # past endPort
    assert not allowed([egress], web, address("2001:db8::1"), 443)  # an IPv4 block holds no IPv6 address
    assert not allowed([egress], web, db, 443)  # ipBlock never matches a pod
    assert ingress_allows([egress], web, db, 443)  # an Egress-only policy leaves ingress alone
