"""Segment data-path benchmark: what everything around the forward pass costs, and whether it keeps a device busy.

    python benchmarks/datapath.py                 # 4096^2 costs, then a simulated device at 16384^2 and 16 x 2048^2
    python benchmarks/datapath.py --quick         # 2048^2 costs, 8192^2 and 8 x 1024^2 (a few minutes)
    python benchmarks/datapath.py --vector-share 8192  # only: footprints' CPU share with a real model on CPU
    python benchmarks/datapath.py --polygon-memory     # only: peak RSS with polygons, 4096^2 and 16384^2

The model is replaced by benchmarks/simulated_device.py (through run_segment's model_factory): it sleeps for
a set time per tile and computes next to nothing, so every CPU-second counted is data path. The pipeline
around it is the product's: readers, inference actor, writers, assemblers, block files, COGs, previews,
metrics against the labels, polygons when on. Defaults are configs/segment.yaml's (tile 384, overlap 64).

- cost: a generated city with its labels, device time 0, after one warm-up run; three runs of each
  configuration, the median one reported (with the range). CPU-seconds per megapixel of each stage from
  summary.json's ledger (each stage's CPU clock, summed over every process that ran it), for the default
  outputs and with polygons. Tiling, blend and threshold run on the inference actor's device: the CPU here, a
  GPU in a GPU deployment; the host total leaves them out. From it, the host cores one GPU needs at an H100's
  rate (1,740 tiles/s) and an A10G's (220 tiles/s).
- feed: the tiles/s this machine's cores feed, measured: one large mosaic (a VRT of copies of the city) with
  a device that takes no time, in steady state (the middle 80% of its passes). The ledger's stages alone would
  allow more (cores over CPU-s per tile); Ray's processes, object-store copies and the driver take the rest.
- busy: a simulated device of 0.8 x that rate over the same mosaic: its busy share in steady state, and end
  to end (device time over the run's wall time, from planning to the last output).
- many: the same device over many mosaics in one run: wall time over device time, the driver's CPU share,
  and how many mosaics' assembly overlapped inference of another.
- Peak RSS (driver and every Ray process) of the cost run and of the large mosaic.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import simulated_device
from common import REPO, TILE, fmt, table
from simulated_device import SimulatedDevice, busy_fraction, read_busy_log, tiles_per_s

OVERLAP = 64
MPX_PER_TILE = (TILE - OVERLAP) ** 2 / 1e6  # each tile adds a stride x stride square of mosaic
GPU_TILES_PER_S = {"H100": 1740.0, "A10G": 220.0}  # RefineNet-ResNet50 at 384, bf16 at 40% of peak (issue 14)
DEVICE_STAGES = ("forward",)  # the stand-in's own work: on a GPU this is the device's
# Stages the inference actor runs on its device: the CPU here, the GPU in a GPU deployment (uint8 tiles are
# cut, converted and batched on it; probabilities blended and thresholded on it). Host CPU is the rest.
ON_DEVICE = ("tiling", "blend", "threshold")
DRIVER = "driver"  # planning (the checkpoint check builds the model) and orchestration: per run, not per pixel
PROFILES = {"full": dict(city=4096, large=16384, many=16, many_size=2048),
            "quick": dict(city=2048, large=8192, many=8, many_size=1024)}


def config(*overrides: str):
    from segcore.config import load_config

    return load_config(REPO / "configs" / "segment.yaml", [
        # A device actor needs little CPU of its own (it waits on the device) and works on two blocks at once, as
        # configs/cluster-segment.yaml's; one assembler of 0.5 CPU leaves the readers and writers a CPU between
        # them on 2 cores.
        "segment.actors=1", "segment.cpus_per_actor=0.5", "segment.torch_threads=1", "segment.blocks_per_actor=2",
        "segment.cpus_per_assembly=0.5", *overrides])


def run(images: list[Path], labels: list[Path], output: Path, cfg, checkpoint: str, device) -> dict:
    """One segment run with the device stand-in: its summary, with the wall seconds from planning to return and
    the peak RSS (MiB) added."""
    from segcore.pipelines.segment import plan_segment, run_segment

    shutil.rmtree(output, ignore_errors=True)
    with common.TreeRssSampler() as rss:
        began, began_at = time.perf_counter(), time.time()
        plan = plan_segment([str(p) for p in images], checkpoint, str(output), cfg, [str(p) for p in labels],
                            model_factory=device)
        summary = run_segment(plan)
        seconds = time.perf_counter() - began
    if summary["failed"]:
        raise RuntimeError(f"segment run failed: {json.dumps(summary['inputs'])[:2000]}")
    shutil.rmtree(output, ignore_errors=True)
    return dict(summary, wall_s=seconds, began_at=began_at, ended_at=began_at + seconds, peak_rss_mib=rss.peak_mib,
                rss_top=rss.top())


def data_path_cpu(summary: dict) -> dict[str, float]:
    """CPU seconds by stage, without the stand-in's own forward pass and the driver."""
    return {stage: cpu for stage, cpu in summary["cpu_s"].items() if stage not in (*DEVICE_STAGES, DRIVER)}


def megapixels(summary: dict) -> float:
    return sum(i["metrics"]["pixels"] for i in summary["inputs"]) / 1e6


def section_cost(work: Path, city, checkpoint: str, results: dict, repeats: int = 3) -> None:
    """Each configuration `repeats` times (one run of 4096^2 is a few seconds of CPU, and this machine's speed
    varies between runs); the run with the median host total is reported, with the range of the totals."""
    # A first run warms the page cache and each process's imports and GDAL state; it is not reported.
    run([city.image], [city.labels], work / "out-cost", config(), checkpoint, SimulatedDevice.factory(0.0))
    for name, overrides in (("default outputs", ()), ("with polygons", ("segment.write_polygons=true",))):
        measured = []
        for _ in range(repeats):
            summary = run([city.image], [city.labels], work / "out-cost", config(*overrides), checkpoint,
                          SimulatedDevice.factory(0.0))
            mpx, cpu = megapixels(summary), data_path_cpu(summary)
            per_mpx = {stage: seconds / mpx for stage, seconds in cpu.items()}
            host = sum(value for stage, value in per_mpx.items() if stage not in ON_DEVICE)
            measured.append((host, summary, mpx, cpu, per_mpx))
            common.log(f"cost, {name}: host {host:.4f} CPU-s/Mpx, all {sum(per_mpx.values()):.4f}, over {mpx:.1f} "
                       f"Mpx ({summary['wall_s']:.1f} s wall)")
        measured.sort(key=lambda entry: entry[0])
        host, summary, mpx, cpu, per_mpx = measured[len(measured) // 2]
        results["cost"][name] = dict(megapixels=mpx, tiles=summary["tiles_computed"], cpu_s=cpu,
                                     cpu_s_per_mpx=per_mpx, total_cpu_s_per_mpx=sum(per_mpx.values()),
                                     host_cpu_s_per_mpx=host, host_range=(measured[0][0], measured[-1][0]),
                                     cpu_s_per_tile=sum(cpu.values()) / summary["tiles_computed"],
                                     cores_per_gpu={gpu: host * rate * MPX_PER_TILE
                                                    for gpu, rate in GPU_TILES_PER_S.items()},
                                     driver_cpu_s=summary["cpu_s"][DRIVER], wall_s=summary["wall_s"],
                                     peak_rss_mib=max(entry[1]["peak_rss_mib"] for entry in measured))


def section_feed(work: Path, image: Path, labels: Path, checkpoint: str, results: dict) -> float:
    """The tiles/s this machine's cores feed: the large mosaic with a device that takes no time, in steady state
    (the middle 80% of its passes). Everything the run does counts (Ray's processes, object-store copies, the
    driver, assembly beside the stream), not only the ledger's stages."""
    log = work / "feed.log"
    log.unlink(missing_ok=True)
    summary = run([image], [labels], work / "out-feed", config(), checkpoint, SimulatedDevice.factory(0.0, log))
    rate = tiles_per_s(read_busy_log(log), 0.1)
    ledger = (os.cpu_count() or 1) / results["cost"]["default outputs"]["cpu_s_per_tile"]
    results["feed"] = dict(tiles_per_s=rate, ledger_tiles_per_s=ledger, wall_s=summary["wall_s"],
                           tiles=summary["tiles_computed"])
    common.log(f"feed: {rate:.1f} tiles/s in steady state (the ledger's stages alone would allow {ledger:.1f})")
    return rate


def section_busy(work: Path, image: Path, labels: Path, checkpoint: str, rate: float, results: dict) -> None:
    log = work / "busy.log"
    log.unlink(missing_ok=True)
    summary = run([image], [labels], work / "out-busy", config(), checkpoint, SimulatedDevice.factory(1 / rate, log))
    passes = read_busy_log(log)
    device_s = summary["tiles_computed"] / rate
    results["busy"] = dict(megapixels=megapixels(summary), tiles=summary["tiles_computed"], device_tiles_per_s=rate,
                           device_s=device_s, wall_s=summary["wall_s"], steady_busy=busy_fraction(passes, 0.1),
                           end_to_end=device_s / summary["wall_s"], peak_rss_mib=summary["peak_rss_mib"],
                           start_s=passes[0][0] - summary["began_at"], tail_s=summary["ended_at"] - passes[-1][1],
                           rss_top=summary["rss_top"], cpu_s=summary["cpu_s"])
    common.log(f"busy: steady {results['busy']['steady_busy']:.3f}, end to end {results['busy']['end_to_end']:.3f}")


def section_many(work: Path, city, count: int, checkpoint: str, rate: float, results: dict) -> None:
    folder = work / f"many-{count}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    images, labels = [], []
    for n in range(count):  # hard links: separate mosaics to the pipeline, no extra disk
        os.link(city.image, folder / f"mosaic{n:02d}.tif")
        os.link(city.labels, folder / f"mosaic{n:02d}_labels.tif")
        images.append(folder / f"mosaic{n:02d}.tif")
        labels.append(folder / f"mosaic{n:02d}_labels.tif")
    summary = run(images, labels, work / "out-many", config(), checkpoint, SimulatedDevice.factory(1 / rate))
    device_s = summary["tiles_computed"] / rate
    timelines = [i["timeline"] for i in summary["inputs"]]
    overlapping = sum(1 for n, t in enumerate(timelines) if any(
        t["assembly"][0] < other["inference"][1] and other["inference"][0] < t["assembly"][1]
        for m, other in enumerate(timelines) if m != n))
    results["many"] = dict(mosaics=count, tiles=summary["tiles_computed"], device_s=device_s,
                           wall_s=summary["wall_s"], wall_over_device=summary["wall_s"] / device_s,
                           driver_share=summary["cpu_s"]["driver"] / summary["wall_s"],
                           assembly_overlapping_inference=overlapping, timelines=timelines)
    common.log(f"many: wall {summary['wall_s']:.1f} s for {device_s:.1f} s of device time")


def section_vector_share(work: Path, city, checkpoint: str, size: int) -> str:
    """The footprint stages' share of a CPU run with a real model (the random-weights ResNet18/16 stand-in of
    benchmarks/run.py, one actor per core as configs/dev.yaml): polygonize and footprints over all CPU."""
    image = common.mosaic(work, city.image, size)
    labels = common.tiled_vrt(city.labels, work / f"labels-{size}.vrt", size, size)
    cores = os.cpu_count() or 1
    cfg = config("segment.write_polygons=true", f"segment.actors={cores}",
                 f"segment.cpus_per_actor={(cores - 1) / cores}", "segment.cpus_per_reader=0.25",
                 "segment.cpus_per_writer=0.25", "segment.readers=1", "segment.writers=1")
    summary = run([image], [labels], work / "out-vectors", cfg, checkpoint, None)
    cpu = summary["cpu_s"]
    vector, total = cpu.get("polygonize", 0.0) + cpu.get("footprints", 0.0), sum(cpu.values())
    metrics = summary["inputs"][0]["metrics"]
    return (f"### Footprints with a real model: {size}^2, refinenet-resnet18/16 (random weights), {cores} actors, "
            f"{cores} cores\n\n" + table(["wall s", "CPU-s, all stages", "CPU-s, polygonize + footprints", "share",
                                            "buildings"],
                                           [[fmt(summary["wall_s"], 1), fmt(total, 1), fmt(vector, 1),
                                             f"{100 * vector / total:.1f} %", metrics.get("polygons")]]))


def section_polygon_memory(work: Path, city, checkpoint: str, large_size: int) -> str:
    """Peak RSS with polygons on: the city and a large mosaic of copies of it (device time 0)."""
    rows = []
    for size in (city_size(city), large_size):
        image = common.mosaic(work, city.image, size)
        labels = common.tiled_vrt(city.labels, work / f"labels-{size}.vrt", size, size)
        summary = run([image], [labels], work / "out-memory", config("segment.write_polygons=true"), checkpoint,
                      SimulatedDevice.factory(0.0))
        rows.append([f"{size}^2", summary["inputs"][0]["metrics"]["polygons"], fmt(summary["wall_s"], 1),
                     f"{summary['peak_rss_mib']:.0f}", summary["rss_top"]])
        common.log(f"polygons at {size}^2: peak RSS {summary['peak_rss_mib']:.0f} MiB")
    ratio = float(rows[1][3]) / float(rows[0][3])
    return (f"### Peak RSS with polygons on (simulated device, 0 s/tile): ratio {ratio:.2f}\n\n"
            + table(["mosaic", "buildings", "wall s", "peak RSS MiB", "largest processes (MiB)"], rows))


def city_size(city) -> int:
    import rasterio

    with rasterio.open(city.image) as src:
        return src.width


def report(results: dict) -> str:
    cost, cores = results["cost"], results["machine"]["cores"]
    names = list(cost)
    stages = sorted({stage for row in cost.values() for stage in row["cpu_s_per_mpx"]})
    rows = [[stage + (" (on the device with a GPU)" if stage in ON_DEVICE else ""),
             *(fmt(cost[n]["cpu_s_per_mpx"].get(stage, 0.0), 4) for n in names)] for stage in stages]
    rows.append(["**host CPU, total** (median run)", *(f"**{fmt(cost[n]['host_cpu_s_per_mpx'], 4)}**" for n in names)])
    rows.append(["host CPU, lowest and highest run", *(f"{fmt(cost[n]['host_range'][0], 4)}-"
                                                         f"{fmt(cost[n]['host_range'][1], 4)}" for n in names)])
    rows.append(["total with the device-side stages on this CPU",
                 *(fmt(cost[n]["total_cpu_s_per_mpx"], 4) for n in names)])
    rows.append(["driver, CPU-s per run (not in the total)", *(fmt(cost[n]["driver_cpu_s"], 2) for n in names)])
    for gpu, rate in GPU_TILES_PER_S.items():
        rows.append([f"host cores per GPU at {rate:.0f} tiles/s ({gpu})",
                     *(fmt(cost[n]["cores_per_gpu"][gpu], 1) for n in names)])
    lines = [f"### Data-path cost: {results['city']}^2 generated city, tile {TILE}, overlap {OVERLAP}, "
             f"simulated device (0 s/tile), {cores} cores; the median of three runs", "",
             table(["stage", *(f"CPU-s/Mpx, {n}" for n in names)], rows), ""]
    busy, many, large = results["busy"], results["many"], results["large"]
    runs = [[f"{large}^2, steady state (middle 80% of passes)", busy["tiles"], fmt(busy["device_s"], 1),
             fmt(busy["wall_s"], 1), f"device busy {fmt(busy['steady_busy'], 3)}"],
            [f"{large}^2, end to end (planning to last output)", busy["tiles"], fmt(busy["device_s"], 1),
             fmt(busy["wall_s"], 1), f"device rate reached {fmt(busy['end_to_end'], 3)} ({fmt(busy['start_s'], 1)} s "
             f"to the first pass, {fmt(busy['tail_s'], 1)} s after the last)"],
            [f"{many['mosaics']} x {results['many_size']}^2 in one run", many["tiles"], fmt(many["device_s"], 1),
             fmt(many["wall_s"], 1), f"wall / device {fmt(many['wall_over_device'], 3)}; driver CPU "
             f"{fmt(100 * many['driver_share'], 1)}% of wall; {many['assembly_overlapping_inference']} of "
             f"{many['mosaics']} assemblies overlapped inference"]]
    small_rss = cost["default outputs"]["peak_rss_mib"]
    feed = results["feed"]
    lines += [f"### Simulated device at 0.8 x what {cores} cores feed ({busy['device_tiles_per_s']:.1f} tiles/s)", "",
              f"The {cores} cores feed {feed['tiles_per_s']:.1f} tiles/s: {large}^2 with a device that takes no time, "
              f"steady state (the ledger's stages alone would allow {feed['ledger_tiles_per_s']:.1f}).", "",
              table(["run", "tiles", "device s", "wall s", "figure"], runs), "",
              f"Peak RSS: {results['city']}^2 {small_rss:.0f} MiB, {large}^2 {busy['peak_rss_mib']:.0f} MiB "
              f"(ratio {busy['peak_rss_mib'] / small_rss:.2f}; {busy['rss_top']})"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/segcore-datapath"))
    parser.add_argument("--polygon-memory", action="store_true",
                        help="only this: peak RSS with polygons at the city's size and the large size")
    parser.add_argument("--vector-share", type=int, metavar="SIZE",
                        help="only this: the footprint stages' CPU share with a real model on a SIZE^2 mosaic")
    args = parser.parse_args()
    p = PROFILES["quick" if args.quick else "full"]
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    results: dict = dict(p, machine=dict(common.machine_info(), cores=cores), cost={},
                         command="python benchmarks/datapath.py" + (" --quick" if args.quick else ""))
    city = common.city(work, p["city"])
    small = common.city(work, p["many_size"])
    # Random weights: the model of --vector-share; plan_segment checks it beside the stand-in too.
    checkpoint = common.make_checkpoint(work / "resnet18-16.pt", "resnet18", 16)
    common.start_ray(cores)
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(simulated_device)  # the actors need not import benchmarks/
    if args.vector_share or args.polygon_memory:
        print(section_vector_share(work, city, checkpoint, args.vector_share) if args.vector_share else
              section_polygon_memory(work, city, checkpoint, p["large"]))
        return 0
    section_cost(work, city, checkpoint, results)
    large = common.mosaic(work, city.image, p["large"])
    large_labels = common.tiled_vrt(city.labels, work / f"labels-{p['large']}.vrt", p["large"], p["large"])
    rate = 0.8 * section_feed(work, large, large_labels, checkpoint, results)
    section_busy(work, large, large_labels, checkpoint, rate, results)
    section_many(work, small, p["many"], checkpoint, rate, results)
    common.publish(report(results), results, work, "datapath")
    return 0


if __name__ == "__main__":
    sys.exit(main())
