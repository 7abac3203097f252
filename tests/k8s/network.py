"""Kubernetes NetworkPolicy semantics (networking.k8s.io/v1), as a function the tests can ask "may A connect to B
on port P", plus the pods the Job controller makes from the rendered templates.

The rules modelled, from the API reference: a pod is isolated for a direction when some policy in its namespace
selects it and lists that direction in policyTypes (default: Ingress, plus Egress when the policy has egress
rules); an isolated pod allows what the union of those policies' rules allow; a connection needs the source's
egress and the destination's ingress. A rule without `from`/`to` matches every peer, without `ports` every port. In
one peer, namespaceSelector and podSelector must both match; separate peers are alternatives. A port is a number
(with endPort, a range) or a container port's name; the protocol defaults to TCP. ipBlock matches addresses
outside the cluster only: pods are matched by selectors (what the documentation says ipBlock is for, and what
Cilium, GKE Dataplane V2's engine, does with pod addresses).
"""

import dataclasses
import ipaddress
from collections.abc import Mapping

from tests.k8s.manifests import pod_specs


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """A pod (namespace set) or an address outside the cluster (ip set)."""
    name: str
    namespace: str | None = None
    labels: Mapping = dataclasses.field(default_factory=dict)
    ip: str | None = None
    ports: Mapping = dataclasses.field(default_factory=dict)  # container port name -> number

    @property
    def is_pod(self) -> bool:
        return self.namespace is not None


def address(ip: str) -> Endpoint:
    return Endpoint(name=ip, ip=ip)


def namespace_labels(namespace: str) -> dict:
    return {"kubernetes.io/metadata.name": namespace}  # set by the API server on every namespace


def selects(selector: Mapping | None, labels: Mapping) -> bool:
    """A LabelSelector: matchLabels and matchExpressions all hold ({} selects everything)."""
    selector = selector or {}
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        present = key in labels
        holds = {"In": present and labels[key] in values, "NotIn": not present or labels[key] not in values,
                 "Exists": present, "DoesNotExist": not present}[operator]
        if not holds:
            return False
    return True


def _in_block(block: Mapping, ip: str) -> bool:
    address_ = ipaddress.ip_address(ip)
    network = ipaddress.ip_network(block["cidr"])
    if address_.version != network.version or address_ not in network:
        return False
    return not any(address_ in ipaddress.ip_network(cidr) for cidr in block.get("except", [])
                   if ipaddress.ip_network(cidr).version == address_.version)


def peer_matches(peer: Mapping, policy_namespace: str, endpoint: Endpoint) -> bool:
    if "ipBlock" in peer:
        return not endpoint.is_pod and _in_block(peer["ipBlock"], endpoint.ip)
    if not endpoint.is_pod:
        return False
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], namespace_labels(endpoint.namespace)):
            return False
    elif endpoint.namespace != policy_namespace:
        return False
    return selects(peer.get("podSelector"), endpoint.labels)


def port_matches(rule_ports: list | None, port: int, protocol: str, destination: Endpoint) -> bool:
    if not rule_ports:
        return True
    for entry in rule_ports:
        if entry.get("protocol", "TCP") != protocol:
            continue
        wanted = entry.get("port")
        if wanted is None:
            return True
        if isinstance(wanted, str):
            wanted = destination.ports.get(wanted)
            if wanted is None:
                continue
        if wanted <= port <= entry.get("endPort", wanted):
            return True
    return False


def policy_types(policy: Mapping) -> list:
    spec = policy["spec"]
    return spec.get("policyTypes") or (["Ingress"] + (["Egress"] if "egress" in spec else []))


def _isolating(policies, pod: Endpoint, direction: str) -> list:
    return [policy for policy in policies
            if policy["metadata"].get("namespace", "default") == pod.namespace
            and selects(policy["spec"].get("podSelector"), pod.labels) and direction in policy_types(policy)]


def _side_allows(policies, pod: Endpoint, peer: Endpoint, port: int, protocol: str, direction: str,
                 destination: Endpoint) -> bool:
    if not pod.is_pod:
        return True  # an address outside the cluster enforces nothing of ours
    isolating = _isolating(policies, pod, direction)
    if not isolating:
        return True
    rules_key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    for policy in isolating:
        namespace = policy["metadata"].get("namespace", "default")
        for rule in policy["spec"].get(rules_key) or []:
            peers = rule.get(peers_key)
            peer_ok = not peers or any(peer_matches(p, namespace, peer) for p in peers)
            if peer_ok and port_matches(rule.get("ports"), port, protocol, destination):
                return True
    return False


def ingress_allows(policies, source: Endpoint, destination: Endpoint, port: int, protocol: str = "TCP") -> bool:
    """Whether the destination pod's policies admit this connection (whatever the source's own policies say)."""
    return _side_allows(policies, destination, source, port, protocol, "Ingress", destination)


def egress_allows(policies, source: Endpoint, destination: Endpoint, port: int, protocol: str = "TCP") -> bool:
    """Whether the source pod's policies let it open this connection (whatever the destination admits)."""
    return _side_allows(policies, source, destination, port, protocol, "Egress", destination)


def allowed(policies, source: Endpoint, destination: Endpoint, port: int, protocol: str = "TCP") -> bool:
    return (egress_allows(policies, source, destination, port, protocol)
            and ingress_allows(policies, source, destination, port, protocol))


def network_policies(objects) -> list:
    return [obj for obj in objects if obj["kind"] == "NetworkPolicy"]


def pods(objects, copies: int = 2) -> list:
    """The pods Kubernetes runs from the rendered workloads, with the labels the Job controller adds: every pod of
    an Indexed Job (by completion index), and `copies` pods of any other template (a retry running beside a
    stuck pod, two manual runs): pods of one role must not reach each other either."""
    found = []
    for obj in objects:
        for path, spec in pod_specs(obj):
            if obj["kind"] == "Job":
                job, job_spec = obj["metadata"]["name"], obj["spec"]
            elif obj["kind"] == "CronJob":
                job, job_spec = f"{obj['metadata']['name']}-29412345", obj["spec"]["jobTemplate"]["spec"]
            else:
                raise AssertionError(f"{obj['kind']}/{obj['metadata']['name']}: not a Job or CronJob{path}")
            template = job_spec["template"]
            labels = {**template.get("metadata", {}).get("labels", {}), "batch.kubernetes.io/job-name": job,
                      "job-name": job, "batch.kubernetes.io/controller-uid": f"uid-{job}",
                      "controller-uid": f"uid-{job}"}
            ports = {port["name"]: port["containerPort"] for container in spec["containers"]
                     for port in container.get("ports", []) if "name" in port}
            if job_spec.get("completionMode") == "Indexed":
                indexes = [str(i) for i in range(job_spec["completions"])]
                found += [Endpoint(f"{job}-{i}", obj["metadata"]["namespace"],
                                   {**labels, "batch.kubernetes.io/job-completion-index": i}, ports=ports)
                          for i in indexes]
            else:
                found += [Endpoint(f"{job}-{n}", obj["metadata"]["namespace"], labels, ports=ports)
                          for n in range(copies)]
    return found
