"""Helpers shared by the benchmark scripts (benchmarks/run.py, benchmarks/gpu.py).

Nothing here is part of the product: machine facts, random-weights checkpoints, sample mosaics (a generated
city, and VRTs that tile copies of it to any size), FLOP counting, model-only throughput, a peak-RSS sampler
over a process tree, a loopback S3 server, and markdown tables.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from xml.sax.saxutils import escape

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TILE = 384


# ---------------------------------------------------------------- the machine

def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')} load {load_average():.2f}] {message}", flush=True)


def start_ray(num_cpus: int) -> float:
    """A local Ray for a benchmark (workers can import the repository), quiet; returns its start time in s."""
    import ray

    began = time.perf_counter()
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, object_store_memory=2_000_000_000,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}}, logging_level="WARNING")
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    return time.perf_counter() - began


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    import torch

    try:
        import ray
        ray_version = ray.__version__
    except ImportError:  # pragma: no cover - ray is a dependency
        ray_version = "?"
    return dict(date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                cpu=cpu_model(), logical_cpus=os.cpu_count(), affinity=len(os.sched_getaffinity(0)),
                memory_gib=round(_total_memory() / 2**30, 1), load_average=[round(x, 2) for x in os.getloadavg()],
                python=platform.python_version(), torch=torch.__version__, ray=ray_version,
                platform=platform.platform())


def _total_memory() -> int:
    import psutil

    return psutil.virtual_memory().total


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


# ---------------------------------------------------------------- model, checkpoint, FLOPs, speed

def build(backbone: str, width: int):
    from segcore.model import build_model

    return build_model("refinenet", backbone, width, False)


def make_checkpoint(path: Path, backbone: str, width: int, seed: int = 0) -> str:
    """A random-weights segcore checkpoint (speed does not depend on the weights); threshold 0.5."""
    import torch

    from segcore.checkpoint import Checkpoint
    from segcore.config import InputConfig, ModelConfig

    torch.manual_seed(seed)
    model = build(backbone, width)
    Checkpoint(ModelConfig(backbone=backbone, decoder_width=width), InputConfig(), model.state_dict(),
               threshold=0.5).save(str(path))
    return str(path)


def model_flops(backbone: str, width: int, tile: int = TILE) -> tuple[float, int]:
    """(GFLOP of one forward pass on one tile, parameters), counted by torch's FlopCounterMode on the meta
    device (no compute). torch counts a multiply-add as 2 FLOPs; convolutions and matmuls only."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from segcore.model import count_parameters

    with torch.device("meta"):
        model = build(backbone, width).eval()
        x = torch.empty(1, 3, tile, tile)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() / 1e9, count_parameters(model)


def _sync(device) -> None:
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize()


def time_call(fn: Callable[[], object], *, min_seconds: float, min_reps: int = 2, warmup: int = 1,
              device="cpu") -> float:
    """Seconds per call of fn (after `warmup` calls), repeated for at least min_seconds and min_reps."""
    for _ in range(warmup):
        fn()
    _sync(device)
    reps, began = 0, time.perf_counter()
    while True:
        fn()
        reps += 1
        if reps >= min_reps:
            _sync(device)
            elapsed = time.perf_counter() - began
            if elapsed >= min_seconds:
                return elapsed / reps


def model_tiles_per_s(model, batch: int, *, min_seconds: float, device="cpu", channels_last=False,
                      autocast_bf16: bool = False, tile: int = TILE, warmup: int = 1,
                      autocast_device: str = "cuda") -> float:
    """Model-only throughput: forward passes on an in-memory batch of random tiles (no I/O, no blending)."""
    import contextlib

    import torch

    x = torch.rand(batch, 3, tile, tile, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast(autocast_device, dtype=torch.bfloat16) if autocast_bf16 else contextlib.nullcontext()

    def step():
        with torch.inference_mode(), autocast:
            return model(x)

    return batch / time_call(step, min_seconds=min_seconds, warmup=warmup, device=device)


def _concurrent_worker(checkpoint: str, batch: int, seconds: float, threads: int, barrier, rates) -> None:
    import torch

    from segcore.checkpoint import load_model
    from segcore.config import ModelConfig

    torch.set_num_threads(threads)
    model = load_model(checkpoint, ModelConfig()).model.eval().to(memory_format=torch.channels_last)
    model_tiles_per_s(model, batch, min_seconds=0, channels_last=True)  # warm-up, before the others start
    barrier.wait()  # every process measures over the same stretch of time
    rates.put(model_tiles_per_s(model, batch, min_seconds=seconds, channels_last=True, warmup=0))


def concurrent_tiles_per_s(checkpoint: str, processes: int, batch: int, *, seconds: float, threads: int = 1) -> float:
    """Model-only tiles/s of `processes` processes running the checkpoint's model side by side, summed:
    the ceiling of an actor pool of that many actors with `threads` intra-op threads each."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter each, as a Ray actor is
    barrier, rates = ctx.Barrier(processes), ctx.Queue()
    workers = [ctx.Process(target=_concurrent_worker, args=(checkpoint, batch, seconds, threads, barrier, rates))
               for _ in range(processes)]
    for worker in workers:
        worker.start()
    total = sum(rates.get(timeout=600) for _ in workers)
    for worker in workers:
        worker.join()
    return total


def matmul_gflops(n: int = 2048, *, min_seconds: float = 2.0, device="cpu", dtype=None) -> float:
    """GFLOP/s of an n x n x n torch.matmul (2 n^3 FLOPs), at torch's current thread count."""
    import torch

    dtype = dtype or torch.float32
    a = torch.rand(n, n, device=device, dtype=dtype)
    b = torch.rand(n, n, device=device, dtype=dtype)
    return 2 * n ** 3 / time_call(lambda: a @ b, min_seconds=min_seconds, device=device) / 1e9


def conv_gflops(*, batch: int = 4, channels: int = 128, size: int = 96, min_seconds: float = 2.0,
                device="cpu") -> tuple[float, str]:
    """GFLOP/s of a 3x3 stride-1 conv2d (channels -> channels on size x size, padding 1), a typical
    RefineNet/ResNet layer; FLOPs = 2 * N * H * W * Cout * Cin * 9."""
    import torch

    conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False).to(device).eval()
    x = torch.rand(batch, channels, size, size, device=device)
    flops = 2 * batch * size * size * channels * channels * 9

    def step():
        with torch.inference_mode():
            return conv(x)

    shape = f"3x3 conv {channels}->{channels}, {batch}x{size}x{size}"
    return flops / time_call(step, min_seconds=min_seconds, device=device) / 1e9, shape


# ---------------------------------------------------------------- mosaics

def city(workdir: Path, size: int, seed: int = 0):
    """A generated sample city of size x size px (cached in workdir across runs of the same size and seed)."""
    from segcore.synth import generate_city
    from segcore.synth.city import CityPaths

    out = workdir / f"city-{size}-s{seed}"
    paths = CityPaths(out / "image.tif", out / "labels.tif", out / "buildings.geojson")
    if not all(p.exists() for p in (paths.image, paths.labels, paths.buildings)):
        paths = generate_city(out, size, size, seed=seed)
    return paths


def tiled_vrt(source: Path, out: Path, width: int, height: int) -> Path:
    """A hand-written GDAL VRT of width x height px tiling copies of `source` (cropped at the right and bottom
    edges), with the source's CRS, pixel size, origin and block layout: a realistic VRT mosaic input."""
    import rasterio

    with rasterio.open(source) as src:
        sw, sh, count, crs, transform = src.width, src.height, src.count, src.crs, src.transform
        block_y, block_x = src.block_shapes[0]
        dtype = src.dtypes[0]
        colors = [ci.name.capitalize() for ci in src.colorinterp]
    vrt_type = {"uint8": "Byte", "uint16": "UInt16", "int16": "Int16", "float32": "Float32"}[dtype]
    geo = ", ".join(repr(float(v)) for v in (transform.c, transform.a, transform.b, transform.f, transform.d,
                                              transform.e))
    lines = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">']
    if crs:
        lines.append(f"  <SRS>{escape(crs.to_wkt())}</SRS>")
    lines.append(f"  <GeoTransform>{geo}</GeoTransform>")
    for band in range(1, count + 1):
        lines.append(f'  <VRTRasterBand dataType="{vrt_type}" band="{band}">')
        if band - 1 < len(colors) and colors[band - 1] in ("Red", "Green", "Blue"):
            lines.append(f"    <ColorInterp>{colors[band - 1]}</ColorInterp>")
        for row in range(0, height, sh):
            for col in range(0, width, sw):
                w, h = min(sw, width - col), min(sh, height - row)
                lines += [
                    "    <SimpleSource>",
                    f'      <SourceFilename relativeToVRT="0">{escape(str(Path(source).resolve()))}</SourceFilename>',
                    f"      <SourceBand>{band}</SourceBand>",
                    f'      <SourceProperties RasterXSize="{sw}" RasterYSize="{sh}" DataType="{vrt_type}" '
                    f'BlockXSize="{block_x}" BlockYSize="{block_y}" />',
                    f'      <SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}" />',
                    f'      <DstRect xOff="{col}" yOff="{row}" xSize="{w}" ySize="{h}" />',
                    "    </SimpleSource>"]
        lines.append("  </VRTRasterBand>")
    lines.append("</VRTDataset>")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    return out


def materialize(vrt: Path, out: Path) -> Path:
    """A real tiled, deflate-compressed GeoTIFF with the VRT's pixels (for S3, where VRTs of local files
    make no sense)."""
    import rasterio.shutil

    if not out.exists():
        tmp = out.with_name(out.name + ".partial")
        rasterio.shutil.copy(str(vrt), str(tmp), driver="GTiff", tiled=True, blockxsize=512, blockysize=512,
                             compress="DEFLATE", zlevel=1, predictor=2, bigtiff="IF_SAFER")
        os.replace(tmp, out)
    return out


def mosaic(workdir: Path, base: Path, size: int) -> Path:
    """`base` itself when it already has this size, else a VRT of copies of it (or a crop of it)."""
    import rasterio

    with rasterio.open(base) as src:
        if src.width == size and src.height == size:
            return base
    return tiled_vrt(base, workdir / f"mosaic-{size}.vrt", size, size)


# ---------------------------------------------------------------- memory

class TreeRssSampler:
    """Samples the summed RSS of a process and all its descendants every `interval` s in a thread.

    Under a local `ray.init` the GCS, the raylet, the dashboard agents and every Ray worker (read tasks,
    inference actors) are descendants of the driver, so the sum is the whole job's memory. Shared pages
    (the object store, shared libraries) count once per process that maps them, as RSS does. Processes
    in `exclude` (and their descendants: e.g. a loopback S3 server) are left out.
    """

    def __init__(self, pid: int | None = None, interval: float = 0.2, exclude: Iterable[int] = ()):
        import psutil

        self.root = psutil.Process(pid or os.getpid())
        self.interval, self.exclude = interval, set(exclude)
        self.peak, self.peak_breakdown, self.samples = 0, {}, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        import psutil

        excluded = set(self.exclude)
        for pid in self.exclude:
            with contextlib.suppress(psutil.Error):
                excluded.update(c.pid for c in psutil.Process(pid).children(recursive=True))
        total, parts = 0, {}
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return
        for proc in procs:
            if proc.pid in excluded:
                continue
            try:
                rss = proc.memory_info().rss
                name = _short_name(proc)
            except psutil.Error:
                continue
            total += rss
            parts[name] = parts.get(name, 0) + rss
        self.samples += 1
        if total > self.peak:
            self.peak, self.peak_breakdown = total, parts

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeRssSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def peak_mib(self) -> float:
        return self.peak / 2**20

    def top(self, n: int = 4) -> str:
        items = sorted(self.peak_breakdown.items(), key=lambda kv: -kv[1])[:n]
        return ", ".join(f"{name} {rss / 2**20:.0f}" for name, rss in items)


def _short_name(proc) -> str:
    cmd = proc.cmdline()
    name = proc.name()
    if name.startswith("ray::") or (cmd and cmd[0].startswith("ray::")):
        title = cmd[0] if cmd and cmd[0].startswith("ray::") else name
        return title.split()[0][:40]
    for part in cmd[:3]:
        base = os.path.basename(part)
        if base in ("raylet", "gcs_server") or base.endswith(".py"):
            return base
    return name[:30]


# ---------------------------------------------------------------- loopback S3

def set_s3_credentials() -> None:
    """Dummy credentials for the loopback S3 server; set them before ray.init so Ray's workers inherit them."""
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "segcore-bench-key-id")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "segcore-bench-secret")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    os.environ.pop("AWS_PROFILE", None)


def upload(server, local: Path, url: str) -> str:
    """Put a local file at an s3:// URL of the loopback server (tests.servers.MotoServer), bucket included."""
    bucket, key = url[len("s3://"):].split("/", 1)
    with contextlib.suppress(Exception):  # the bucket exists already
        server.client().create_bucket(Bucket=bucket)
    server.client().upload_file(str(local), bucket, key)
    return url


# ---------------------------------------------------------------- output

def table(headers: list[str], rows: list[list]) -> str:
    """A GitHub markdown table (numbers formatted by the caller)."""
    cells = [[str(c) for c in row] for row in rows]
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(out)


def fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def dump_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")


def publish(text: str, data: dict, folder: Path, stem: str) -> None:
    """Print a benchmark's markdown report and write it, with its raw figures, to folder/stem.{md,json}."""
    print("\n" + text, flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.md").write_text(text)
    dump_json(folder / f"{stem}.json", data)
    print(f"written: {folder / stem}.md, {folder / stem}.json")
