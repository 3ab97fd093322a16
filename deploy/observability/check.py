#!/usr/bin/env python3
"""Checks the alert rules and dashboards in deploy/observability beyond what
promtool and tests/cli.rs check (CI: .ci/run).

- No rule or panel depends on a `job` label value (`job="..."`, `job=~...`):
  the job is whatever a scrape config or the Prometheus Operator names it;
  roles are told apart by edgelink_build_info{role}.
- Every alert has a severity, a summary, a description and a runbook_url
  `<Cargo.toml repository>/blob/main/docs/RUNBOOK.md#<alert name, lower case>`
  whose section exists in docs/RUNBOOK.md, and every `## EdgeLink...`
  section there is an alert's.
- Every alert fires in some promtool test (prometheus/tests/*.yml).
- Every dashboard panel and query uses the `${datasource}` variable, every
  metric selector filters by `$namespace` and `$instance`, and every query
  parses (promtool check rules over them).
- Both Prometheus configurations pass `promtool check config` as they are
  mounted: each in a directory with alerts.yml beside it. Debian's promtool
  is built without Kubernetes discovery, so there the kubernetes_sd_configs
  of the Kubernetes one are swapped for a static target first (everything
  else, relabelling included, is still checked).

Usage: python3 deploy/observability/check.py   (from anywhere; exit 1 on a finding)
Needs PyYAML (Debian: python3-yaml).
"""

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
ALERTS = os.path.join(HERE, "prometheus", "alerts.yml")
TESTS = glob.glob(os.path.join(HERE, "prometheus", "tests", "*.yml"))
DASHBOARDS = glob.glob(os.path.join(HERE, "grafana", "dashboards", "*.json"))
PROMETHEUS_CONFIGS = [
    os.path.join(HERE, "prometheus", "prometheus.yml"),
    os.path.join(ROOT, "deploy", "compose", "prometheus.yml"),
]
RUNBOOK = os.path.join(ROOT, "docs", "RUNBOOK.md")

JOB_MATCHER = re.compile(r"\bjob\s*(=~|!~|!=|=(?!=))")
SELECTOR = re.compile(r"\b((?:edgelink|process)_[a-z0-9_]+)(\{[^}]*\})?")
FILTERS = ('namespace=~"$namespace"', 'instance=~"$instance"')
SEVERITIES = {"critical", "warning", "info"}

findings = []


def find(where, what):
    findings.append(f"{os.path.relpath(where, ROOT)}: {what}")


def no_job_matcher(path, text):
    for n, line in enumerate(text.splitlines(), 1):
        if JOB_MATCHER.search(line):
            find(path, f"line {n} matches on a job value: {line.strip()}")


def runbook_base():
    with open(os.path.join(ROOT, "Cargo.toml"), "rb") as f:
        repo = tomllib.load(f)["workspace"]["package"]["repository"]
    return f"{repo.rstrip('/')}/blob/main/docs/RUNBOOK.md#"


def runbook_sections():
    with open(RUNBOOK) as f:
        return {m.group(1) for m in re.finditer(r"^## (\S+)\s*$", f.read(), re.M)}


def check_alerts():
    with open(ALERTS) as f:
        text = f.read()
    no_job_matcher(ALERTS, text)
    base = runbook_base()
    sections = runbook_sections()
    names = set()
    for group in yaml.safe_load(text)["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert")
            if name is None:
                continue
            names.add(name)
            labels = rule.get("labels") or {}
            notes = rule.get("annotations") or {}
            if labels.get("severity") not in SEVERITIES:
                find(ALERTS, f"{name}: severity is not one of {sorted(SEVERITIES)}")
            for key in ("summary", "description", "runbook_url"):
                if not notes.get(key):
                    find(ALERTS, f"{name}: no {key}")
            url = notes.get("runbook_url", "")
            if url != base + name.lower():
                find(ALERTS, f"{name}: runbook_url is {url!r}, not {base + name.lower()!r}")
            if name not in sections:
                find(RUNBOOK, f"no section '## {name}'")
    for section in sections:
        if section.startswith("EdgeLink") and section not in names:
            find(RUNBOOK, f"section '## {section}' names no alert")
    return names


def check_tests(names):
    fired = set()
    for path in TESTS:
        with open(path) as f:
            for test in yaml.safe_load(f).get("tests", []):
                for case in test.get("alert_rule_test", []):
                    if case.get("exp_alerts"):
                        fired.add(case["alertname"])
    for name in sorted(names - fired):
        find(ALERTS, f"{name}: no promtool test expects it to fire")


def check_dashboard(path):
    with open(path) as f:
        text = f.read()
    no_job_matcher(path, text)
    dash = json.loads(text)
    variables = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
    if variables.get("datasource", {}).get("type") != "datasource":
        find(path, "no datasource variable named 'datasource'")
    for name in ("namespace", "instance"):
        v = variables.get(name, {})
        if v.get("allValue") != ".*" or not v.get("includeAll"):
            find(path, f"variable {name}: needs includeAll and allValue '.*' (a missing label matches it)")
    exprs = []
    for panel in dash.get("panels", []):
        if panel.get("type") == "row":
            continue
        title = panel.get("title")
        sources = [panel.get("datasource")] + [t.get("datasource") for t in panel.get("targets", [])]
        if any((s or {}).get("uid") != "${datasource}" for s in sources):
            find(path, f"panel {title!r}: a datasource other than ${{datasource}}")
        for target in panel.get("targets", []):
            expr = target.get("expr", "")
            exprs.append((title, expr))
            for m in SELECTOR.finditer(expr):
                matchers = m.group(2) or ""
                if not all(f in matchers for f in FILTERS):
                    find(path, f"panel {title!r}: {m.group(1)} not filtered by namespace and instance")
    parse_queries(path, exprs)


def parse_queries(path, exprs):
    """Every query, with the variables at their All value, through promtool."""
    rules = [
        {"record": f"dashboard:query_{i}", "expr": expr.replace("$namespace", ".*").replace("$instance", ".*")}
        for i, (_, expr) in enumerate(exprs)
    ]
    with tempfile.NamedTemporaryFile("w", suffix=".yml") as f:
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
        f.flush()
        r = subprocess.run(["promtool", "check", "rules", f.name], capture_output=True, text=True)
    if r.returncode != 0:
        find(path, "queries do not parse:\n" + r.stdout + r.stderr)


def check_prometheus_config(path):
    with open(path) as f:
        config = yaml.safe_load(f)
    with tempfile.TemporaryDirectory() as d:
        shutil.copy(ALERTS, d)
        mounted = os.path.join(d, "prometheus.yml")
        shutil.copy(path, mounted)
        r = subprocess.run(["promtool", "check", "config", mounted], capture_output=True, text=True)
        if r.returncode != 0 and "field kubernetes_sd_configs not found" in r.stdout + r.stderr:
            for job in config.get("scrape_configs", []):
                if job.pop("kubernetes_sd_configs", None) is not None:
                    job["static_configs"] = [{"targets": ["kubernetes-sd.invalid:9090"]}]
            with open(mounted, "w") as f:
                yaml.safe_dump(config, f)
            r = subprocess.run(["promtool", "check", "config", mounted], capture_output=True, text=True)
    if r.returncode != 0:
        find(path, "promtool check config:\n" + r.stdout + r.stderr)
    if not config.get("alerting", {}).get("alertmanagers"):
        find(path, "no alerting block: alerts would be evaluated and never sent")


def main():
    if not shutil.which("promtool"):
        print("promtool is missing (Debian: apt-get install prometheus)", file=sys.stderr)
        return 1
    names = check_alerts()
    check_tests(names)
    for path in DASHBOARDS:
        check_dashboard(path)
    for path in PROMETHEUS_CONFIGS:
        check_prometheus_config(path)
    for f in findings:
        print(f, file=sys.stderr)
    if findings:
        return 1
    print(
        f"ok: {len(names)} alerts, {len(TESTS)} test file(s), {len(DASHBOARDS)} dashboard(s), "
        f"{len(PROMETHEUS_CONFIGS)} Prometheus configurations"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
