"""The deployment documents agree with each other: step references and the docker run command."""

from __future__ import annotations

import re

from tests import procs

ROOT = procs.ROOT
GUIDE = ROOT / "docs" / "deploy-azure.md"

# Every "step N" in the documents, by the words around it, and what step N must hold for the
# reference to be right. A reference not listed here fails the test: add it with its target.
REFERENCES = {
    "docs/deploy-azure.md": [
        ("so that step {n} removes all of it", "az group delete"),
        ("step {n} opens exactly three", "az network nsg rule create"),
        ("recreate the VM as in step {n}", "az vm create"),
        ("filled in step {n}", "certbot certonly"),
        ("where step {n} left you", "cd privatemode-gateway"),
        ("admin password from step {n}", "secrets/admin_password"),
        ("the checks of step {n} on the VM", "systemd-detect-virt --cvm"),
        ("copy the new files as in step {n}", "scp "),
        ("the docker run command of step {n}", "sudo docker run -d"),
        ("Port 80 is not open (step {n})", "--destination-port-ranges 80 443"),
        ("does not point at the VM (step {n})", "getent hosts"),
        ("update `allow-ssh-from-me` (step {n})", "-n allow-ssh-from-me"),
        ("Step {n}: another region", "az vm list-skus"),
    ],
    "docs/security.md": [
        ("time out; VM: no container reaches 8081): the commands of `deploy-azure.md`, step {n}", "nc -vz"),
        ("the four commands of `deploy-azure.md`, step {n}", "grep -caFf"),
        ("without inter-container traffic (`deploy-azure.md`, step {n})", "enable_icc=false"),
    ],
    "docs/certbot-deploy-hook.sh": [
        ("Install it once (docs/deploy-azure.md, step {n})", "docs/certbot-deploy-hook.sh"),
    ],
    "README.md": [],
}
STEP = re.compile(r"\bsteps?\s+(\d+)", re.I)


def flat(text: str) -> str:
    """One line, single spaces: references wrap across lines (and, in the hook, comment lines)."""
    return " ".join(re.sub(r"^\s*# ?", "", line) for line in text.splitlines()).replace("  ", " ")


def guide_steps() -> dict[int, str]:
    parts = re.split(r"^## (\d+)\. ", GUIDE.read_text(), flags=re.M)
    steps = {int(number): body for number, body in zip(parts[1::2], parts[2::2], strict=True)}
    assert sorted(steps) == list(range(1, len(steps) + 1)), "the guide's steps are numbered 1, 2, ..."
    return steps


def test_every_step_reference_points_at_the_right_step():
    steps = guide_steps()
    wrong = []
    for name, references in REFERENCES.items():
        text = flat((ROOT / name).read_text())
        covered = set()
        for words, target in references:
            pattern = re.escape(flat(words)).replace(re.escape("{n}"), r"(\d+)")
            found = list(re.finditer(pattern, text))
            assert len(found) == 1, f"{name}: {len(found)} places read {words!r}"
            n = int(found[0].group(1))
            covered.add(found[0].start(1))
            if target not in steps.get(n, ""):
                wrong.append(f"{name}: {words.format(n=n)!r}: step {n} has no {target!r}")
        for match in STEP.finditer(text):
            if match.start(1) not in covered:
                context = text[max(0, match.start() - 50) : match.end()]
                wrong.append(f"{name}: {context!r} is not checked here")
    assert not wrong, "\n".join(wrong)


def docker_run(text: str) -> str:
    """The `sudo docker run -d` command of a document, whitespace and line continuations folded."""
    found = re.findall(r"^sudo docker run -d .*?(?<!\\)\n", text, re.S | re.M)
    assert len(found) == 1, found
    return " ".join(found[0].replace("\\\n", " ").split())


def test_the_readme_runs_the_container_as_the_guide_does():
    readme = docker_run((ROOT / "README.md").read_text())
    assert readme == docker_run(GUIDE.read_text())
    # Docker's json-file log grows without end unless bounded; the gateway logs every request.
    assert "--log-opt max-size=" in readme and "--log-opt max-file=" in readme


def test_the_security_diagram_shows_privatemode_proxy_on_every_interface():
    # privatemode-proxy has no flag for its bind address: it listens on all of the container's
    # interfaces, which is why the port must stay unpublished and the network isolated.
    security = (ROOT / "docs" / "security.md").read_text()
    diagram = re.search(r"## The path of a prompt\n\n```\n(.*?)```", security, re.S)
    assert diagram, "docs/security.md: no diagram under 'The path of a prompt'"
    text = diagram.group(1)
    assert "127.0.0.1:8081" not in text
    assert "0.0.0.0:8081" in text and "no auth" in text and "unpublished" in text, text
