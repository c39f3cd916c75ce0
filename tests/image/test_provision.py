"""First-boot provisioning (appliance/system/provision.py): good and bad files, with certificates
made at test time. A bad file gives one clear line per problem (file, line, field) and
writes nothing; a good one becomes one new generation switched on atomically."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import certs
import pytest
from conftest import ROOT

from appliance.system import integrity
from appliance.system.config import load_config
from appliance.system.provcheck import ProvisionError, check
from appliance.system.provision import apply
from demoward.ward import DEMO_POLICY

GOOD = """\
[appliance]
site = "st-marys"
id = "ward4b-01"
mode = "monitor"

[broker]
url = "mqtts://broker.hosp.example:8883"
ca = "ca.pem"
cert = "client.pem"
key = "client.key"
fleet_key = "fleet.pub"

[policy]
file = "ward.policy.toml"

[management]
interface = "eth2"
vlan = 20
address = "10.20.0.41/24"
gateway = "10.20.0.1"
dns = ["10.20.0.2"]

[ssh]
authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHx9mUqJ8h7WfFZVw0b3t2nqg0S4h it@hospital"]
"""


@pytest.fixture
def boot(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """A boot partition with a complete, valid provisioning file."""
    part = tmp_path / "boot"
    part.mkdir()
    pki = certs.write_bundle(part)
    (part / "ward.policy.toml").write_text(DEMO_POLICY)
    (part / "wardtap-provision.toml").write_text(GOOD)
    return part, pki


def problems(path: Path, **kwargs: Any) -> str:
    with pytest.raises(ProvisionError) as info:
        check(str(path), **kwargs)
    return str(info.value)


def test_good_file_applies_as_one_generation(boot: tuple[Path, dict[str, Any]],
                                             tmp_path: Path) -> None:
    part, _ = boot
    plan = check(str(part / "wardtap-provision.toml"))
    assert (plan.site, plan.appliance, plan.mode) == ("st-marys", "ward4b-01", "monitor")
    data = tmp_path / "data"
    data.mkdir()
    etc = data / "config"          # stands in for the image's /etc/wardtap symlink
    generation = apply(plan, str(data), str(etc), install_manifest=None, user=None, group=None)
    assert os.readlink(data / "config") == f"config.{generation}"
    config = load_config(str(etc / "wardtap.toml"))
    assert config.mode == "monitor" and config.datapath == "inline"
    assert config.datapath_options == {"bridge": "br0", "queue": 0}
    assert config.broker is not None and config.broker["appliance"] == "ward4b-01"
    assert config.broker["cert"] == f"{etc}/tls/client.pem"
    assert config.policy == str(data / "state" / generation / "policy.toml")
    assert Path(config.policy).read_text() == DEMO_POLICY
    assert config.store == str(data / "state" / "wardtap.db")
    assert (etc / "tls/client.key").stat().st_mode & 0o777 == 0o640
    assert (etc / "ssh/authorized_keys.wardadmin").read_text().startswith("ssh-ed25519 ")
    netdev = (etc / "network/60-wardtap-mgmt-eth2.20.netdev").read_text()
    assert "Kind=vlan" in netdev and "Id=20" in netdev
    network = (etc / "network/60-wardtap-mgmt-eth2.20.network").read_text()
    assert "Address=10.20.0.41/24" in network and "Gateway=10.20.0.1" in network
    # the integrity manifest of what was written, as the daemon names it, verifies clean
    assert config.integrity is not None
    manifest = config.integrity["manifests"][-1]
    found = integrity.verify(manifest)
    assert found.ok and found.checked == len(plan.files) + 2     # + wardtap.toml, policy
    assert f"{etc}/wardtap.toml" in integrity.load(manifest)["files"]

    # provisioning again switches to a new generation; the previous one is kept
    second = apply(plan, str(data), str(etc), install_manifest=None, user=None, group=None,
                   generation=generation + "b")
    assert os.readlink(data / "config") == f"config.{second}"
    assert (data / f"config.{generation}").is_dir()
    apply(plan, str(data), str(etc), install_manifest=None, user=None, group=None,
          generation=generation + "c")
    assert not (data / f"config.{generation}").exists()          # only two are kept


def _edit(part: Path, old: str, new: str) -> Path:
    path = part / "wardtap-provision.toml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    return path


def test_missing_and_malformed(tmp_path: Path, boot: tuple[Path, dict[str, Any]]) -> None:
    part, _ = boot
    assert "no such file" in problems(tmp_path / "nothing.toml")
    path = _edit(part, 'site = "st-marys"', 'site = "st-marys')
    message = problems(path)
    assert "TOML syntax" in message and ":2" in message
    path.write_text(GOOD.replace('url = "mqtts://broker.hosp.example:8883"\n', "")
                    .replace('mode = "monitor"', 'mode = "paranoid"\ncolour = "red"'))
    message = problems(path)
    assert "[appliance.colour]: unknown field" in message
    path.write_text(GOOD.replace('url = "mqtts://broker.hosp.example:8883"\n', ""))
    assert '[broker]: url = "..." is missing' in problems(path)
    path.write_text(GOOD.replace('mode = "monitor"', 'mode = "paranoid"')
                    .replace("mqtts://", "mqtt://").replace('id = "ward4b-01"', 'id = "a/b"'))
    lines = problems(path).splitlines()      # every problem at once, one line each
    assert any("[appliance.mode]: must be one of" in line for line in lines)
    assert any("[broker.url]: the fleet broker must be reached over TLS" in line
               for line in lines)
    assert any("[appliance.id]" in line and "'a/b'" in line for line in lines)
    assert all(line.startswith(str(path)) for line in lines)


def test_certificate_problems(boot: tuple[Path, dict[str, Any]]) -> None:
    part, pki = boot
    path = part / "wardtap-provision.toml"
    ca_key, ca_cert = pki["ca_key"], pki["ca_cert"]

    k, cert = certs.client(ca_key, ca_cert, "ward4b-01", start=certs.NOW - 400 * certs.DAY,
                           end=certs.NOW - 30 * certs.DAY)
    (part / "client.pem").write_bytes(certs.pem_cert(cert))
    (part / "client.key").write_bytes(certs.pem_key(k))
    message = problems(path)
    assert ":9 [broker.cert]: client certificate 'ward4b-01' expired on" in message

    k, cert = certs.client(ca_key, ca_cert, "ward4b-01", start=certs.NOW + 10 * certs.DAY)
    (part / "client.pem").write_bytes(certs.pem_cert(cert))
    (part / "client.key").write_bytes(certs.pem_key(k))
    assert "is not valid before" in problems(path, clock_synced=True)
    plan = check(str(path), clock_synced=False)      # an unsynchronised clock: a warning
    assert any("not synchronised" in w for w in plan.warnings)

    k, cert = certs.client(ca_key, ca_cert, "ward9z-07")
    (part / "client.pem").write_bytes(certs.pem_cert(cert))
    (part / "client.key").write_bytes(certs.pem_key(k))
    assert "the certificate is for 'ward9z-07', this appliance is 'ward4b-01'" in problems(path)

    other_key, other_ca = certs.ca("Somebody Else's CA")
    k, cert = certs.client(other_key, other_ca, "ward4b-01")
    (part / "client.pem").write_bytes(certs.pem_cert(cert))
    (part / "client.key").write_bytes(certs.pem_key(k))
    assert "not issued by the CA in [broker] ca" in problems(path)

    k, cert = certs.client(ca_key, ca_cert, "ward4b-01")
    (part / "client.pem").write_bytes(certs.pem_cert(cert))
    (part / "client.key").write_bytes(certs.pem_key(certs.key()))
    assert "does not belong to the certificate" in problems(path)
    (part / "client.key").write_bytes(certs.pem_key(k, password=b"secret"))
    assert "the private key is encrypted" in problems(path)
    (part / "client.key").write_bytes(b"-----BEGIN PRIVATE KEY-----\nnope\n")
    assert "[broker.key]: not a PEM private key" in problems(path)
    (part / "client.key").write_bytes(certs.pem_key(k))
    (part / "client.pem").write_text("not a certificate")
    assert "[broker.cert]: not a PEM certificate" in problems(path)
    (part / "client.pem").write_bytes(certs.pem_cert(cert))
    (part / "fleet.pub").write_bytes(certs.key().public_key().public_bytes(
        certs.serialization.Encoding.PEM, certs.serialization.PublicFormat.SubjectPublicKeyInfo))
    assert "not an Ed25519 public key" in problems(path)
    (part / "fleet.pub").unlink()
    assert "[broker.fleet_key]: fleet.pub: no such file" in problems(path)


def test_inline_pem_and_policy_errors(boot: tuple[Path, dict[str, Any]]) -> None:
    part, _ = boot
    ca_pem = (part / "ca.pem").read_text()
    path = _edit(part, 'ca = "ca.pem"', f'ca = """{ca_pem}"""')
    assert check(str(path)).files["tls/ca.pem"] == ca_pem.encode()
    (part / "ward.policy.toml").write_text("[policy]\nname = 'x'\n[[rules]]\nfrom = 'nobody'\n"
                                           "to = 'any'\n")
    message = problems(path)
    assert "ward.policy.toml:4 [rules.rule-1.from]" in message and "[policy.file]" in message
    path.write_text(path.read_text().replace('[policy]\nfile = "ward.policy.toml"\n', ""))
    assert "mode monitor needs a policy" in problems(path)


def test_cli_failure_writes_nothing_and_says_why(boot: tuple[Path, dict[str, Any]],
                                                 tmp_path: Path) -> None:
    """The service's command: exit 2, the message on the console and the login prompt and
    in the error file (for the LED fault service), the data partition untouched, the
    provisioning file kept for the technician to fix."""
    part, _ = boot
    path = _edit(part, 'id = "ward4b-01"', 'id = "ward4b-02"')     # CN mismatch
    data, console, issue = tmp_path / "data", tmp_path / "console", tmp_path / "issue.d"
    data.mkdir()
    error_file = tmp_path / "provision.error"
    result = subprocess.run(
        [sys.executable, "-m", "appliance.system.provision", "apply", str(path),
         "--data", str(data),
         "--etc", str(data / "config"), "--user", "", "--group", "",
         "--error-file", str(error_file), "--console", str(console), "--issue-dir",
         str(issue)], capture_output=True, text=True, timeout=60, cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 2
    assert "PROVISIONING FAILED" in result.stderr and "ward4b-02" in result.stderr
    assert "PROVISIONING FAILED" in console.read_text()
    assert "the certificate is for 'ward4b-01'" in (issue / "50-wardtap-provision.issue"
                                                    ).read_text()
    assert "[broker.cert]" in error_file.read_text()
    assert list(data.iterdir()) == [] and path.exists()

    # fixed: applied, the error state and the provisioning file (it holds the key) are gone
    path.write_text(path.read_text().replace('id = "ward4b-02"', 'id = "ward4b-01"'))
    result = subprocess.run(
        [sys.executable, "-m", "appliance.system.provision", "apply", str(path),
         "--data", str(data),
         "--etc", str(data / "config"), "--user", "", "--group", "",
         "--error-file", str(error_file), "--console", "", "--issue-dir", str(issue)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 0, result.stderr
    assert "provisioned st-marys/ward4b-01" in result.stdout
    assert not path.exists() and not error_file.exists()
    assert not (issue / "50-wardtap-provision.issue").exists()
    info = json.loads((data / "config" / "provision.json").read_text())
    assert info["appliance"] == "ward4b-01"


def test_failure_while_writing_leaves_nothing_half_done(
        boot: tuple[Path, dict[str, Any]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    part, _ = boot
    plan = check(str(part / "wardtap-provision.toml"))
    data = tmp_path / "data"
    data.mkdir()
    first = apply(plan, str(data), str(data / "config"), None, None, None, generation="g1")

    def disk_full(*args: Any, **kwargs: Any) -> None:
        raise integrity.IntegrityError("state/g2/integrity.json: cannot write: No space left")

    monkeypatch.setattr(integrity, "write", disk_full)
    with pytest.raises(integrity.IntegrityError):
        apply(plan, str(data), str(data / "config"), None, None, None, generation="g2")
    assert os.readlink(data / "config") == f"config.{first}"        # the old one in force
    assert sorted(p.name for p in data.iterdir()) == ["config", "config.g1", "state"]
    assert sorted(p.name for p in (data / "state").iterdir()) == ["g1"]
