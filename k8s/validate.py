#!/usr/bin/env python3
"""Validates respite's Kubernetes manifests (k8s/). Run by tests/ops.rs; needs the
packages kubernetes-validate and promql-parser (scripts/test.sh installs both into
target/ops-venv).

    python k8s/validate.py [--emit DIR]

What it checks, and how:

1. Renders every kustomization under k8s/overlays (and k8s/base) with a small
   re-implementation of the Kustomize features these files use (resources, namespace,
   images, configMapGenerator with files and options, name hashes and the references to
   them). A kustomization field outside that subset is an error, so the renderer cannot
   silently disagree with `kubectl kustomize` on a field it does not know.
2. Validates every rendered object against the Kubernetes OpenAPI schemas that the
   kubernetes-validate package ships (no network), strictly (unknown fields are errors),
   for the oldest supported Kubernetes version (1.30: the preStop `sleep` action) and
   the newest the package knows.
3. PodMonitor and PrometheusRule (monitoring.coreos.com/v1) have no schema there: they
   are validated against the structural schemas below, written from the Prometheus
   Operator's v1 CRDs for the fields a PodMonitor or PrometheusRule of respite may use,
   with unknown fields rejected.
4. Parses every PromQL expression (alerts, dashboard panels, dashboard variables) with
   promql-parser, and checks the Grafana dashboard's structure.
5. Checks what the example promises: the app's REDIS_URL and respite's listener, probes
   on the admin port, the journal on an emptyDir at --journal-dir and larger than
   [journal] max_bytes, a termination grace period longer than respite's preStop sleep
   plus [shutdown] grace_period, requests and limits, the security context, the
   PodMonitor selecting the pod's admin port, the alerts the README names and their
   thresholds against config.toml.

With --emit DIR it writes DIR/config.toml (the rendered ConfigMap's config.toml) and
DIR/respite-args.json (the respite container's args), which tests/ops.rs passes to
`respite check-config`. Exit status 0 when everything holds; otherwise every problem
is printed and the status is 1.
"""

import argparse
import copy
import hashlib
import json
import os
import re
import sys
import tomllib

import jsonschema
import promql_parser
import yaml
from kubernetes_validate import utils as kv

K8S = os.path.dirname(os.path.abspath(__file__))
# The oldest Kubernetes the example supports (preStop `sleep`), and the newest known.
VERSIONS = ["1.30", kv.major_minor(kv.latest_version())]
ALERTS = [
    "RespiteUpstreamDown",
    "RespiteJournalGrowing",
    "RespiteJournalNearFull",
    "RespiteReplayStalled",
    "RespiteRefusingWritesJournalFull",
]

problems = []


def problem(where, msg):
    problems.append(f"{where}: {msg}")


# ---------------------------------------------------------------------------------------
# 1. Kustomize, the subset these manifests use.

KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "namespace", "images", "configMapGenerator"}
GENERATOR_KEYS = {"name", "files", "options"}
GENERATOR_OPTIONS = {"labels", "annotations", "disableNameSuffixHash"}
IMAGE_KEYS = {"name", "newName", "newTag", "digest"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


def load_yaml_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def name_hash(obj):
    # Kustomize hashes the generated object's content; any stable content hash shows the
    # same thing here: the name changes with the content and every reference follows.
    text = json.dumps({"kind": obj["kind"], "name": obj["metadata"]["name"], "data": obj.get("data")}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def render(directory):
    """Returns (objects, generated name map {original: new}) of the kustomization in directory."""
    where = os.path.relpath(os.path.join(directory, "kustomization.yaml"), os.path.dirname(K8S))
    k = load_yaml_docs(os.path.join(directory, "kustomization.yaml"))[0]
    if k.get("apiVersion") != "kustomize.config.k8s.io/v1beta1" or k.get("kind") != "Kustomization":
        problem(where, "must be apiVersion kustomize.config.k8s.io/v1beta1, kind Kustomization")
    for key in set(k) - KUSTOMIZATION_KEYS:
        problem(where, f"field {key!r} is not supported by k8s/validate.py (add it there, or do without)")
    objects, renames = [], {}
    for res in k.get("resources", []):
        path = os.path.normpath(os.path.join(directory, res))
        if os.path.isdir(path):
            sub, sub_renames = render(path)
            objects += sub
            renames.update(sub_renames)
        elif os.path.isfile(path):
            objects += load_yaml_docs(path)
        else:
            problem(where, f"resource {res!r} does not exist")
    for gen in k.get("configMapGenerator", []):
        for key in set(gen) - GENERATOR_KEYS:
            problem(where, f"configMapGenerator field {key!r} is not supported by k8s/validate.py")
        opts = gen.get("options", {})
        for key in set(opts) - GENERATOR_OPTIONS:
            problem(where, f"configMapGenerator option {key!r} is not supported by k8s/validate.py")
        data = {}
        for f in gen.get("files", []):
            with open(os.path.join(directory, f)) as fh:
                data[os.path.basename(f)] = fh.read()
        cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data}
        if opts.get("labels"):
            cm["metadata"]["labels"] = dict(opts["labels"])
        if opts.get("annotations"):
            cm["metadata"]["annotations"] = dict(opts["annotations"])
        if not opts.get("disableNameSuffixHash"):
            new = f"{gen['name']}-{name_hash(cm)}"
            renames[gen["name"]] = new
            cm["metadata"]["name"] = new
        objects.append(cm)
    for obj in objects:
        rename_config_maps(obj, renames)
        for image in k.get("images", []):
            for key in set(image) - IMAGE_KEYS:
                problem(where, f"images field {key!r} is not supported by k8s/validate.py")
            set_image(obj, image)
        if "namespace" in k and obj.get("kind") not in CLUSTER_SCOPED:
            obj.setdefault("metadata", {})["namespace"] = k["namespace"]
    return objects, renames


def pod_spec(obj):
    if obj.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return obj.get("spec", {}).get("template", {}).get("spec", {})
    if obj.get("kind") == "Pod":
        return obj.get("spec", {})
    return None


def all_containers(spec):
    return spec.get("initContainers", []) + spec.get("containers", [])


def rename_config_maps(obj, renames):
    spec = pod_spec(obj)
    if spec is None:
        return
    for v in spec.get("volumes", []):
        if "configMap" in v and v["configMap"].get("name") in renames:
            v["configMap"]["name"] = renames[v["configMap"]["name"]]
    for c in all_containers(spec):
        for e in c.get("envFrom", []):
            ref = e.get("configMapRef", {})
            if ref.get("name") in renames:
                ref["name"] = renames[ref["name"]]
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("configMapKeyRef", {})
            if ref.get("name") in renames:
                ref["name"] = renames[ref["name"]]


def set_image(obj, image):
    spec = pod_spec(obj)
    if spec is None:
        return
    for c in all_containers(spec):
        name = re.split(r"[@:]", c.get("image", ""), maxsplit=1)[0]
        if name != image["name"]:
            continue
        new = image.get("newName", name)
        if "digest" in image:
            new += "@" + image["digest"]
        elif "newTag" in image:
            new += ":" + str(image["newTag"])
        c["image"] = new


# ---------------------------------------------------------------------------------------
# 2./3. Schemas.

DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
DNS_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$", "maxLength": 253}
METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": DNS_NAME, "namespace": DNS_NAME, "labels": STRING_MAP, "annotations": STRING_MAP},
    "additionalProperties": False,
}
LABEL_SELECTOR = {
    "type": "object",
    "properties": {
        "matchLabels": STRING_MAP,
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
                "additionalProperties": False,
            },
        },
    },
    "additionalProperties": False,
}
RELABEL = {
    "type": "object",
    "properties": {
        "sourceLabels": {"type": "array", "items": {"type": "string", "pattern": r"^[a-zA-Z_][a-zA-Z0-9_]*$"}},
        "separator": {"type": "string"},
        "targetLabel": {"type": "string"},
        "regex": {"type": "string"},
        "modulus": {"type": "integer", "minimum": 0},
        "replacement": {"type": "string"},
        "action": {
            "enum": ["replace", "Replace", "keep", "Keep", "drop", "Drop", "hashmod", "HashMod", "labelmap",
                     "LabelMap", "labeldrop", "LabelDrop", "labelkeep", "LabelKeep", "lowercase", "Lowercase",
                     "uppercase", "Uppercase", "keepequal", "KeepEqual", "dropequal", "DropEqual"]
        },
    },
    "additionalProperties": False,
}
# monitoring.coreos.com/v1 PodMonitor: the fields of the Prometheus Operator's CRD that a
# plain HTTP scrape uses (authentication and TLS fields are left out on purpose: respite's
# admin endpoint serves /metrics without them).
PODMONITOR = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PodMonitor"},
        "metadata": METADATA,
        "spec": {
            "type": "object",
            "required": ["selector", "podMetricsEndpoints"],
            "properties": {
                "jobLabel": {"type": "string"},
                "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                "selector": LABEL_SELECTOR,
                "namespaceSelector": {
                    "type": "object",
                    "properties": {"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}},
                    "additionalProperties": False,
                },
                "sampleLimit": {"type": "integer", "minimum": 0},
                "targetLimit": {"type": "integer", "minimum": 0},
                "labelLimit": {"type": "integer", "minimum": 0},
                "podMetricsEndpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "properties": {
                            "port": {"type": "string", "minLength": 1},
                            "portNumber": {"type": "integer", "minimum": 1, "maximum": 65535},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                            "interval": DURATION,
                            "scrapeTimeout": DURATION,
                            "honorLabels": {"type": "boolean"},
                            "honorTimestamps": {"type": "boolean"},
                            "filterRunning": {"type": "boolean"},
                            "relabelings": {"type": "array", "items": RELABEL},
                            "metricRelabelings": {"type": "array", "items": RELABEL},
                        },
                        "additionalProperties": False,
                    },
                },
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}
# monitoring.coreos.com/v1 PrometheusRule: the Prometheus Operator's CRD, all fields.
PROMETHEUSRULE = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": METADATA,
        "spec": {
            "type": "object",
            "required": ["groups"],
            "properties": {
                "groups": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "rules"],
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "interval": DURATION,
                            "query_offset": DURATION,
                            "limit": {"type": "integer"},
                            "labels": STRING_MAP,
                            "partial_response_strategy": {"type": "string", "pattern": r"^(?i)(abort|warn)?$"},
                            "rules": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["expr"],
                                    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                                    "properties": {
                                        "alert": {"type": "string", "minLength": 1},
                                        "record": {"type": "string", "pattern": r"^[a-zA-Z_:][a-zA-Z0-9_:]*$"},
                                        "expr": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
                                        "for": DURATION,
                                        "keep_firing_for": DURATION,
                                        "labels": STRING_MAP,
                                        "annotations": STRING_MAP,
                                    },
                                    "additionalProperties": False,
                                },
                            },
                        },
                        "additionalProperties": False,
                    },
                }
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}
CRDS = {("monitoring.coreos.com/v1", "PodMonitor"): PODMONITOR, ("monitoring.coreos.com/v1", "PrometheusRule"): PROMETHEUSRULE}


def where_of(obj, source):
    return f"{source}: {obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def validate_schema(obj, source):
    where = where_of(obj, source)
    crd = CRDS.get((obj.get("apiVersion"), obj.get("kind")))
    if crd is not None:
        for e in jsonschema.Draft202012Validator(crd).iter_errors(obj):
            problem(where, f"{'/'.join(map(str, e.absolute_path))}: {e.message}")
        return
    for version in VERSIONS:
        try:
            kv.validate(copy.deepcopy(obj), version, strict=True)
        except kv.SchemaNotFoundError as e:
            problem(where, f"no schema: {e.message}")
            return
        except kv.ValidationError as e:
            problem(where, f"Kubernetes {version}: {'/'.join(map(str, e.absolute_path))}: {e.message}")


# ---------------------------------------------------------------------------------------
# 4. PromQL and the dashboard.

GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}


def check_promql(expr, where):
    text = expr
    for var, value in GRAFANA_VARS.items():
        text = text.replace(var, value)
    text = re.sub(r"\$\{?[a-zA-Z_]+\}?", "x", text)
    try:
        promql_parser.parse(text)
    except Exception as e:  # the parser raises ValueError with the reason
        problem(where, f"PromQL does not parse ({e}): {' '.join(expr.split())}")


def label_values_query(q):
    m = re.fullmatch(r"\s*label_values\((.*),\s*([a-zA-Z_]+)\)\s*", q)
    return m.group(1) if m else None


def check_dashboard(text, where):
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        problem(where, f"not JSON: {e}")
        return
    for key in ("uid", "title", "panels", "schemaVersion", "templating"):
        if key not in d:
            problem(where, f"dashboard lacks {key!r}")
    variables = {v.get("name"): v for v in d.get("templating", {}).get("list", [])}
    if variables.get("datasource", {}).get("type") != "datasource":
        problem(where, "no datasource variable: the dashboard would be tied to one data source")
    for name, v in variables.items():
        if v.get("type") == "query":
            q = v.get("query", {})
            q = q.get("query") if isinstance(q, dict) else q
            inner = label_values_query(q or "")
            if inner is None:
                problem(where, f"variable {name}: expected label_values(<selector>, <label>), got {q!r}")
            else:
                check_promql(inner, f"{where} variable {name}")
    ids = set()
    for p in d.get("panels", []):
        pw = f"{where} panel {p.get('title')!r}"
        if p.get("id") in ids:
            problem(pw, f"duplicate panel id {p.get('id')}")
        ids.add(p.get("id"))
        for key in ("type", "title", "gridPos"):
            if key not in p:
                problem(pw, f"lacks {key!r}")
        gp = p.get("gridPos", {})
        if not all(isinstance(gp.get(k), int) for k in ("h", "w", "x", "y")) or gp.get("x", 0) + gp.get("w", 0) > 24:
            problem(pw, f"gridPos must have integer h, w, x, y within 24 columns: {gp}")
        if p.get("type") == "row":
            continue
        if not p.get("targets"):
            problem(pw, "has no query")
        for t in p.get("targets", []):
            if not t.get("expr"):
                problem(pw, f"target {t.get('refId')} has no expr")
            else:
                check_promql(t["expr"], pw)
    for a in d.get("annotations", {}).get("list", []):
        if a.get("expr"):
            check_promql(a["expr"], f"{where} annotation {a.get('name')!r}")


# ---------------------------------------------------------------------------------------
# 5. What the example promises.


def parse_size(s):
    if isinstance(s, int):
        return s
    m = re.fullmatch(r"(\d+)\s*([KMGT]i?B?|B)?", s.strip())
    if not m:
        raise ValueError(f"size {s!r}")
    n, unit = int(m.group(1)), (m.group(2) or "B").rstrip("B") or "B"
    return n * {"B": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}[unit]


def parse_seconds(s):
    total = 0.0
    for n, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", s):
        total += float(n) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return total


def args_map(args):
    out = {}
    for a in args:
        if a.startswith("--") and "=" in a:
            k, v = a[2:].split("=", 1)
            out[k] = v
    return out


def check_example(objects, where, emit):
    by_kind = {}
    for o in objects:
        by_kind.setdefault(o["kind"], []).append(o)
    deployments = [d for d in by_kind.get("Deployment", []) if any(c["name"] == "respite" for c in all_containers(pod_spec(d)))]
    if len(deployments) != 1:
        problem(where, f"expected one Deployment with a respite container, found {len(deployments)}")
        return
    dep = deployments[0]
    dw = f"{where}: Deployment/{dep['metadata']['name']}"
    spec = pod_spec(dep)
    containers = {c["name"]: c for c in all_containers(spec)}
    respite = containers["respite"]
    args = args_map(respite.get("args", []))
    config_maps = {c["metadata"]["name"]: c for c in by_kind.get("ConfigMap", [])}
    secrets = {s["metadata"]["name"] for s in by_kind.get("Secret", [])}

    # The configuration, as mounted.
    mounts = {m["name"]: m for m in respite.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    config_path = args.get("config", "")
    config_text = None
    for name, m in mounts.items():
        v = volumes.get(name, {})
        if "configMap" in v and config_path.startswith(m["mountPath"].rstrip("/") + "/"):
            cm = config_maps.get(v["configMap"]["name"])
            if cm is None:
                problem(dw, f"volume {name} names ConfigMap {v['configMap']['name']}, which is not rendered")
            else:
                config_text = cm.get("data", {}).get(config_path[len(m["mountPath"].rstrip("/")) + 1 :])
    if config_text is None:
        problem(dw, f"--config={config_path} is not a file of a mounted ConfigMap")
        return
    cfg = tomllib.loads(config_text)
    if emit:
        with open(os.path.join(emit, "config.toml"), "w") as f:
            f.write(config_text)
        with open(os.path.join(emit, "respite-args.json"), "w") as f:
            json.dump(respite.get("args", []), f)

    # The application reaches respite at redis://127.0.0.1:6379.
    app_env = {e["name"]: e.get("value") for c in containers.values() if c["name"] != "respite" for e in c.get("env", [])}
    if app_env.get("REDIS_URL") != "redis://127.0.0.1:6379":
        problem(dw, "the application container must have REDIS_URL=redis://127.0.0.1:6379")
    if args.get("listen") != "127.0.0.1:6379":
        problem(dw, "respite must listen on 127.0.0.1:6379 (--listen), where the app's REDIS_URL points")
    for e in respite.get("env", []):
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref and ref["name"] not in secrets:
            problem(dw, f"env {e['name']} names Secret {ref['name']}, which is not rendered")

    # Probes on the admin port.
    admin_port = int(args.get("admin-listen", "127.0.0.1:9480").rsplit(":", 1)[1])
    if not args.get("admin-listen", "").startswith("0.0.0.0:"):
        problem(dw, "--admin-listen must bind all interfaces: the kubelet probes the pod IP")
    ports = {p.get("name"): p["containerPort"] for p in respite.get("ports", [])}
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = respite.get(probe, {}).get("httpGet", {})
        port = ports.get(get.get("port"), get.get("port"))
        if get.get("path") != path or port != admin_port:
            problem(dw, f"{probe} must be GET {path} on the admin port {admin_port}, is {get}")

    # The journal on an emptyDir larger than [journal] max_bytes.
    journal_dir = args.get("journal-dir")
    jm = [m for m in mounts.values() if m["mountPath"].rstrip("/") == (journal_dir or "").rstrip("/")]
    if not journal_dir or not jm or "emptyDir" not in volumes.get(jm[0]["name"], {}):
        problem(dw, "--journal-dir must be the mount path of an emptyDir volume")
    else:
        limit = volumes[jm[0]["name"]]["emptyDir"].get("sizeLimit")
        max_bytes = parse_size(cfg.get("journal", {}).get("max_bytes", "256MiB"))
        if limit is None or parse_size(limit) <= max_bytes:
            problem(dw, f"the journal emptyDir's sizeLimit ({limit}) must exceed [journal] max_bytes ({max_bytes})")

    # Drain: preStop, then SIGTERM and [shutdown] grace_period, within the termination grace period.
    sleep = respite.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds")
    if sleep is None:
        problem(dw, "respite needs a preStop sleep, so it outlives the application's shutdown")
    grace = parse_seconds(cfg.get("shutdown", {}).get("grace_period", "10s"))
    tgps = spec.get("terminationGracePeriodSeconds", 30)
    if tgps <= (sleep or 0) + grace:
        problem(dw, f"terminationGracePeriodSeconds ({tgps}) must exceed preStop ({sleep}s) + [shutdown] grace_period ({grace}s)")

    # Resources and security.
    psc = spec.get("securityContext", {})
    for c in containers.values():
        cw = f"{dw} container {c['name']}"
        res = c.get("resources", {})
        for kind in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if r not in res.get(kind, {}):
                    problem(cw, f"resources.{kind}.{r} missing")
        sc = c.get("securityContext", {})
        if not (sc.get("runAsNonRoot", psc.get("runAsNonRoot")) and sc.get("allowPrivilegeEscalation") is False
                and sc.get("readOnlyRootFilesystem") is True and sc.get("capabilities", {}).get("drop") == ["ALL"]):
            problem(cw, "needs runAsNonRoot, allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities.drop: [ALL]")
    memory_limit = parse_size(respite.get("resources", {}).get("limits", {}).get("memory", "0"))
    in_memory = parse_size(cfg.get("store", {}).get("max_bytes", "64MiB")) + parse_size(cfg.get("journal", {}).get("max_bytes", "256MiB"))
    if in_memory * 2 > memory_limit:
        problem(dw, f"store.max_bytes + journal.max_bytes ({in_memory}) must stay under half the memory limit ({memory_limit})")

    # The PodMonitor scrapes this pod's admin port.
    labels = dep["spec"]["template"]["metadata"].get("labels", {})
    monitors = by_kind.get("PodMonitor", [])
    if not monitors:
        problem(where, "no PodMonitor")
    for pm in monitors:
        sel = pm["spec"]["selector"].get("matchLabels", {})
        if not all(labels.get(k) == v for k, v in sel.items()):
            problem(where_of(pm, where), f"selector {sel} does not match the pod's labels {labels}")
        for ep in pm["spec"]["podMetricsEndpoints"]:
            if ep.get("port") not in ports or ports[ep["port"]] != admin_port or ep.get("path", "/metrics") != "/metrics":
                problem(where_of(pm, where), f"endpoint {ep} is not /metrics on respite's admin port")

    # The alerts, their expressions and thresholds.
    rules = [r for pr in by_kind.get("PrometheusRule", []) for g in pr["spec"]["groups"] for r in g["rules"]]
    names = [r.get("alert") for r in rules]
    for a in ALERTS:
        if a not in names:
            problem(where, f"PrometheusRule lacks alert {a}")
    for r in rules:
        rw = f"{where}: alert {r.get('alert')}"
        check_promql(str(r["expr"]), rw)
        if r.get("alert") and (not r.get("labels", {}).get("severity") or not r.get("annotations", {}).get("summary")):
            problem(rw, "needs a severity label and a summary annotation")
        if r.get("alert") == "RespiteJournalNearFull":
            j = cfg.get("journal", {})
            for bound in (j.get("max_entries", 1000000), parse_size(j.get("max_bytes", "256MiB"))):
                if not re.search(rf"\b{bound}\b", str(r["expr"])):
                    problem(rw, f"expression must use config.toml's journal bound {bound}: {' '.join(str(r['expr']).split())}")

    dashboards = [c for c in by_kind.get("ConfigMap", []) if c.get("metadata", {}).get("labels", {}).get("grafana_dashboard")]
    if not dashboards:
        problem(where, "no Grafana dashboard ConfigMap (label grafana_dashboard)")
    for c in dashboards:
        for key, text in c.get("data", {}).items():
            check_dashboard(text, f"{where_of(c, where)} {key}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--emit", help="write the extracted config.toml and respite's args here (the example overlay's)")
    opts = ap.parse_args()
    overlays = os.path.join(K8S, "overlays")
    targets = [os.path.join(overlays, d) for d in sorted(os.listdir(overlays))]
    if not targets:
        problem("k8s/overlays", "no overlay")
    used = set()
    for target in targets:
        where = os.path.relpath(target, os.path.dirname(K8S))
        objects, _ = render(target)
        for o in objects:
            validate_schema(o, where)
        check_example(objects, where, opts.emit if target.endswith("example") else None)
        print(f"{where}: {len(objects)} objects: " + ", ".join(f"{o['kind']}/{o['metadata']['name']}" for o in objects))
    # Every manifest in k8s/ is part of some kustomization (nothing validated only by luck).
    for root, _, files in os.walk(K8S):
        for f in files:
            if f.endswith((".yaml", ".yml")) and f != "kustomization.yaml":
                used.add(os.path.join(root, f))
    referenced = set()
    for root, _, files in os.walk(K8S):
        if "kustomization.yaml" in files:
            k = load_yaml_docs(os.path.join(root, "kustomization.yaml"))[0]
            referenced |= {os.path.normpath(os.path.join(root, r)) for r in k.get("resources", [])}
    for f in sorted(used - referenced):
        problem(os.path.relpath(f, os.path.dirname(K8S)), "not listed in any kustomization.yaml")
    if problems:
        print(f"{len(problems)} problem(s):", file=sys.stderr)
        for p in problems:
            print("  " + p, file=sys.stderr)
        return 1
    print(f"k8s manifests valid (Kubernetes {', '.join(VERSIONS)}; PodMonitor/PrometheusRule structurally)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
