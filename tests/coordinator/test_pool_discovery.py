"""Issue 17, coordinator side: a pooled stack's workers found per job on a real moto server.

Instances are run on moto with the tags infra/ puts on pool members; moto gives them 10.x/54.x
addresses, which are never contacted: the loopback tests set the test-only
COORDINATOR_POOL_ADDRESS_OVERRIDE=127.0.0.1 and tag each instance with its real loopback
worker's port (coordinator-test-port). The batch tests run the real CLI against real workers.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from coordinator import pool_discovery
from coordinator.cli import auto_strips
from coordinator.config import load_config
from coordinator.discovery import WorkerStatus, discover
from coordinator.errors import ConfigError, NoWorkerError
from scripts.testkit.cli import ROOT, clean_env, run_cli
from scripts.testkit.procs import free_port
from tests.support.moto_server import REGION, aws_env, point_boto3_at, run_tagged_instance, ubuntu_ami

PROJECT, STACK = "htp", "dev"
POOLS = [
    {"name": "pool-python-asg", "role": "worker-python", "runtime": "python", "port": 5001},
    {"name": "pool-nodejs-asg", "role": "worker-nodejs", "runtime": "nodejs", "port": 5002},
]
INTERVAL = 0.5  # COORDINATOR_DISCOVERY_SECONDS in the batch tests


@pytest.fixture
def aws(moto, monkeypatch):
    """This process's boto3 pointed at a fresh moto (dummy keys, no metadata lookups)."""
    moto.reset()
    pool_discovery.forget()
    point_boto3_at(moto.url, monkeypatch)
    yield moto.ec2()
    pool_discovery.forget()


def outputs_file(tmp_path: Path, **changes) -> str:
    data = {"workers": [], "pools": POOLS, "project": PROJECT, "stack": STACK, "region": REGION, **changes}
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(data))
    return str(path)


def pooled_config(tmp_path: Path, **env: str):
    return load_config(workers_file=outputs_file(tmp_path), environ={"COORDINATOR_DISCOVERY_SECONDS": "5", **env})


def run_instance(ec2, role: str = "worker-python", stack: str = STACK, port: int | None = None) -> str:
    instance = run_tagged_instance(ec2, f"{role}-x", role, PROJECT, stack)
    if port is not None:
        ec2.create_tags(Resources=[instance], Tags=[{"Key": pool_discovery.TEST_PORT_TAG, "Value": str(port)}])
    return instance


# ---------------------------------------------------------------- config


def test_a_pooled_outputs_file_gives_pools_not_an_error(tmp_path):
    config = pooled_config(tmp_path)
    assert config.workers == ()
    assert config.pool_fleet.region == REGION
    assert [(p.name, p.role, p.port) for p in config.pool_fleet.pools] == [
        ("pool-python-asg", "worker-python", 5001),
        ("pool-nodejs-asg", "worker-nodejs", 5002),
    ]
    assert config.discovery_seconds == 5


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"pools": []}, "the 'workers' list is empty and there are no 'pools'"),
        ({"pools": [{"name": "a", "role": "worker-python", "port": 0}]}, "pools[0].port must be an integer"),
        ({"pools": [{"role": "worker-python", "port": 5001}]}, "pools[0].name must be a non-empty string"),
        ({"region": ""}, "region must be a non-empty string"),
    ],
)
def test_bad_pools_are_refused_with_one_line(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")) as caught:
        load_config(workers_file=outputs_file(tmp_path, **changes), environ={})
    assert "\n" not in str(caught.value)


def test_the_address_override_only_takes_loopback(tmp_path):
    with pytest.raises(ConfigError, match="must be a loopback address"):
        pooled_config(tmp_path, COORDINATOR_POOL_ADDRESS_OVERRIDE="10.0.0.5")
    assert pooled_config(tmp_path, COORDINATOR_POOL_ADDRESS_OVERRIDE="127.0.0.1").pool_fleet.address_override


def test_a_fixed_fleet_never_imports_boto3():
    code = (
        "import sys\n"
        "from coordinator.config import load_config\n"
        "from coordinator.discovery import discover\n"
        "discover(load_config(workers='http://127.0.0.1:9', environ={'COORDINATOR_HEALTH_TIMEOUT': '0.2'}))\n"
        "print('boto3' in sys.modules, 'botocore' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["False", "False"], done.stderr


# ---------------------------------------------------------------- moto


def test_instances_are_found_by_tag_across_pages(aws, tmp_path):
    python = [run_instance(aws) for _ in range(7)]
    run_instance(aws, "worker-nodejs")
    run_instance(aws, stack="other")  # another stack's worker: not ours
    aws.stop_instances(InstanceIds=[python[0]])  # not running: not a worker
    first = aws.describe_instances(MaxResults=5)
    assert first.get("NextToken"), "moto must paginate for this test to prove anything"
    fleet = dataclasses.replace(pooled_config(tmp_path).pool_fleet, page_size=5)
    urls = pool_discovery.describe(fleet)
    assert len(urls) == 7  # 6 running python + 1 nodejs, over two pages
    assert sum(url.endswith(":5001") for url in urls) == 6
    assert sum(url.endswith(":5002") for url in urls) == 1


def test_the_list_is_cached_within_the_interval_and_refreshed_after(aws, tmp_path):
    fleet = pooled_config(tmp_path, COORDINATOR_POOL_ADDRESS_OVERRIDE="127.0.0.1").pool_fleet
    now = [100.0]
    run_instance(aws, port=6001)
    assert pool_discovery.worker_urls(fleet, 5, clock=lambda: now[0]) == ("http://127.0.0.1:6001",)
    run_instance(aws, port=6002)
    now[0] += 4.9
    assert pool_discovery.worker_urls(fleet, 5, clock=lambda: now[0]) == ("http://127.0.0.1:6001",)
    now[0] += 0.2
    assert pool_discovery.worker_urls(fleet, 5, clock=lambda: now[0]) == (
        "http://127.0.0.1:6001",
        "http://127.0.0.1:6002",
    )


def test_no_credentials_is_one_line_naming_what_to_set(moto, tmp_path, monkeypatch):
    point_boto3_at(moto.url, monkeypatch, credentials=False)
    pool_discovery.forget()
    with pytest.raises(ConfigError, match="no AWS credentials; set AWS_PROFILE or AWS_ACCESS_KEY_ID"):
        discover(pooled_config(tmp_path))


def test_an_unreachable_endpoint_is_one_line(aws, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    with pytest.raises(ConfigError, match="cannot reach the EC2 endpoint"):
        discover(pooled_config(tmp_path))


def test_no_running_instance_is_a_no_worker_error(aws, tmp_path):
    run_instance(aws, stack="other")
    with pytest.raises(NoWorkerError, match="no running instances in the pools of stack htp/dev"):
        discover(pooled_config(tmp_path))


def test_discovery_probes_the_instances_it_found(aws, tmp_path, python_worker):
    run_instance(aws, port=int(python_worker.url.rsplit(":", 1)[1]))
    statuses = discover(pooled_config(tmp_path, COORDINATOR_POOL_ADDRESS_OVERRIDE="127.0.0.1"))
    assert [(s.url, s.ok, s.runtime) for s in statuses] == [(python_worker.url, True, "python")]


# ---------------------------------------------------------------- loopback batches


def noise_png(path: Path, seed: int) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def start_batch(moto, tmp_path: Path, count: int, fifo_at: int) -> tuple[subprocess.Popen, list, Path, Path]:
    """A 4-strip invert batch of `count` inputs, --jobs 1; input `fifo_at` is a FIFO the test fills."""
    inputs, expected = [], []
    for index in range(count):
        path = tmp_path / f"in{index:02d}.png"
        if index == fifo_at:
            os.mkfifo(path)
            expected.append(None)
        else:
            expected.append(noise_png(path, index))
        inputs.append(str(path))
    out = tmp_path / "out"
    env = clean_env(
        {
            **aws_env(moto.url),
            "COORDINATOR_WORKERS_FILE": outputs_file(tmp_path),
            "COORDINATOR_POOL_ADDRESS_OVERRIDE": "127.0.0.1",
            "COORDINATOR_DISCOVERY_SECONDS": str(INTERVAL),
        }
    )
    command = [sys.executable, "-m", "coordinator", "process", *inputs, "-o", f"{out}/", "--plan", "invert"]
    command += ["--strips", "4", "--jobs", "1"]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, expected, out, tmp_path / f"in{fifo_at:02d}.png"


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} not written in {timeout}s"
        time.sleep(0.05)


def fill_fifo(fifo: Path, expected: list, index: int) -> None:
    pixels = np.random.default_rng(index).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    expected[index] = pixels
    with open(fifo, "wb") as pipe:  # blocks until the CLI opens it to read
        Image.fromarray(pixels).save(pipe, format="PNG")


def finish(proc: subprocess.Popen, expected: list, out: Path) -> dict[str, set[str]]:
    """Wait for the batch; check every output's pixels; input stem -> worker URLs of its strips."""
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    for index, pixels in enumerate(expected):
        assert np.array_equal(np.asarray(Image.open(out / f"in{index:02d}.png").convert("RGB")), 255 - pixels)
    used: dict[str, set[str]] = {}
    for line in stderr.splitlines():
        if ": strip " in line and " on http://" in line:
            used.setdefault(line.split(".png:")[0].rsplit("/", 1)[-1], set()).add(line.split(" on ")[1].split()[0])
    return used


def test_a_worker_added_mid_batch_takes_strips_within_one_interval(aws, moto, tmp_path, worker_factory):
    first, added = worker_factory("python"), worker_factory("python")
    run_instance(aws, port=int(first.url.rsplit(":", 1)[1]))
    proc, expected, out, fifo = start_batch(moto, tmp_path, count=6, fifo_at=3)
    wait_for(out / "in02.png", proc)  # inputs 0-2 done; the batch now waits on the FIFO
    run_instance(aws, port=int(added.url.rsplit(":", 1)[1]))
    time.sleep(INTERVAL + 0.2)  # one discovery interval (plus a margin) after the instance runs
    fill_fifo(fifo, expected, 3)
    used = finish(proc, expected, out)
    assert all(used[f"in{i:02d}"] == {first.url} for i in range(3))
    for index in range(3, 6):  # 4 strips, least loaded first: the new worker takes two of each
        assert used[f"in{index:02d}"] == {first.url, added.url}


def test_a_worker_killed_mid_batch_is_dropped_with_identical_pixels(aws, moto, tmp_path, worker_factory):
    kept, doomed = worker_factory("python"), worker_factory("python")
    run_instance(aws, port=int(kept.url.rsplit(":", 1)[1]))
    doomed_instance = run_instance(aws, port=int(doomed.url.rsplit(":", 1)[1]))
    proc, expected, out, fifo = start_batch(moto, tmp_path, count=5, fifo_at=2)
    wait_for(out / "in01.png", proc)
    os.killpg(doomed.pid, signal.SIGKILL)  # its own session: the worker and its children, no one else
    doomed.proc.wait(timeout=10)  # the host died; its instance stays "running" until AWS notices
    fill_fifo(fifo, expected, 2)
    time.sleep(0.2)
    aws.terminate_instances(InstanceIds=[doomed_instance])
    used = finish(proc, expected, out)
    assert used["in00"] == {kept.url, doomed.url}  # both took strips before the kill
    for index in range(2, 5):
        assert used[f"in{index:02d}"] == {kept.url}


# ---------------------------------------------------------------- --strips auto


def status(runtime: str, slots: int, ok: bool = True, operations=("invert", "sepia")) -> WorkerStatus:
    return WorkerStatus(f"http://127.0.0.1:{slots}", ok, "w", runtime, operations=operations, max_inflight=slots)


def test_auto_strips_sums_the_capable_workers_slots_within_the_bounds():
    statuses = [status("python", 4), status("nodejs", 3), status("python", 5, ok=False), status("x", 7, operations=())]
    assert auto_strips(statuses, "invert") == 7  # the down one and the one without invert do not count
    assert auto_strips(statuses, "invert", height=5) == 5  # never more strips than rows
    assert auto_strips([status("python", 64)] * 3, "invert") == 32  # the strip threads' limit
    assert auto_strips([], "seed") == 1


def test_strips_auto_on_real_workers(python_worker, nodejs_worker, tmp_path):
    workers = f"{python_worker.url},{nodejs_worker.url}"
    slots = sum(s.max_inflight for s in discover(load_config(workers=workers, environ={})))
    noise_png(tmp_path / "in.png", 1)
    done = run_cli("process", str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png"), "--strips", "auto",
                   "--plan", "invert", "--workers", workers)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"strip 1/{min(slots, 32)} " in done.stderr
    refused = run_cli("process", "in.png", "-o", "o.png", "--strips", "auto", "--plan", "sepia,invert", cwd=tmp_path)
    assert refused.returncode == 2 and "--strips auto needs the seed plan or one op" in refused.stderr
    bad = run_cli("process", "in.png", "-o", "o.png", "--strips", "many", cwd=tmp_path)
    assert bad.returncode == 2 and "expected a whole number or auto, not 'many'" in bad.stderr


# ---------------------------------------------------------------- the page and the CLI


def test_the_page_shows_instances_joining_without_a_restart(aws, tmp_path, monkeypatch, worker_factory):
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    first, joining = worker_factory("python"), worker_factory("python")
    run_instance(aws, port=int(first.url.rsplit(":", 1)[1]))
    for name in ("COORDINATOR_WORKERS", "COORDINATOR_PULUMI_STACK", "COORDINATOR_WORKER_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COORDINATOR_WORKERS_FILE", outputs_file(tmp_path))
    monkeypatch.setenv("COORDINATOR_POOL_ADDRESS_OVERRIDE", "127.0.0.1")
    st.cache_data.clear()
    page = AppTest.from_file(str(ROOT / "coordinator" / "app.py"), default_timeout=60).run()
    assert not page.exception, page.exception
    assert any(t.value.startswith("1 found in the stack's pools") for t in page.sidebar.text)
    run_instance(aws, port=int(joining.url.rsplit(":", 1)[1]))
    page.sidebar.button(key="refresh_workers").click().run()  # or wait out the two 5 s caches
    assert not page.exception, page.exception
    assert any(t.value.startswith("2 found in the stack's pools") for t in page.sidebar.text)
    st.cache_data.clear()


def test_the_cli_says_in_one_line_what_is_missing(moto, tmp_path):
    moto.reset()
    file = outputs_file(tmp_path)
    no_keys = run_cli("workers", "--workers-file", file, env=aws_env(moto.url, credentials=False))
    assert no_keys.returncode == 2, no_keys.stderr
    assert no_keys.stderr.count("\n") == 1 and "no AWS credentials; set AWS_PROFILE" in no_keys.stderr
    empty = run_cli("workers", "--workers-file", file, env=aws_env(moto.url))
    assert empty.returncode == 3 and "no running instances in the pools of stack htp/dev" in empty.stderr


def make_group(moto, ec2, name: str, role: str, size: int) -> None:
    """An Auto Scaling group on moto whose template tags instances as infra/ does."""
    import boto3

    tags = [{"Key": k, "Value": v} for k, v in {"Project": PROJECT, "Stack": STACK, "Role": role}.items()]
    data = {"ImageId": ubuntu_ami(ec2), "InstanceType": "t2.micro"}
    data["TagSpecifications"] = [{"ResourceType": "instance", "Tags": tags}]
    template = ec2.create_launch_template(LaunchTemplateName=f"{name}-lt", LaunchTemplateData=data)
    asg = boto3.client("autoscaling", region_name=REGION, endpoint_url=moto.url)
    asg.create_auto_scaling_group(
        AutoScalingGroupName=name,
        LaunchTemplate={"LaunchTemplateId": template["LaunchTemplate"]["LaunchTemplateId"], "Version": "1"},
        MinSize=size,
        MaxSize=size,
        DesiredCapacity=size,
        AvailabilityZones=[f"{REGION}a"],
    )


def test_instances_a_group_launched_are_found_and_other_groups_left_out(aws, moto, tmp_path):
    make_group(moto, aws, "pool-python-asg", "worker-python", 2)
    make_group(moto, aws, "someone-elses-asg", "worker-python", 1)  # same tags, not one of our pools
    tags = {
        tag["Key"]: tag["Value"]
        for reservation in aws.describe_instances()["Reservations"]
        for tag in reservation["Instances"][0].get("Tags", [])
    }
    assert pool_discovery.GROUP_TAG in tags, "moto must tag group members for this test to prove anything"
    urls = pool_discovery.describe(pooled_config(tmp_path).pool_fleet)
    assert len(urls) == 2 and all(url.endswith(":5001") for url in urls)
