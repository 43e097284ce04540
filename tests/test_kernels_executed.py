"""The optional GPU kernels executed, not traced: SageAttention's and FlashAttention's own Triton kernels run on CPU
under Triton's interpreter (pst_yolo.kernel_check, in a subprocess: the interpreter must be on before Triton is
imported), at every coarse shape of the shipped detection layouts at 128-1280 px, against float64.

SageAttention is a ``test`` dependency. FlashAttention is not on the package index as a wheel; CI installs its source
without the CUDA build (.ci/run: ``FLASH_ATTENTION_SKIP_CUDA_BUILD=TRUE pip install --no-build-isolation
flash-attn==2.8.3.post2 einops``), and its tests skip with that reason where it is missing.
"""

from pathlib import Path

import pytest

from pst_yolo import kernel_check

pytestmark = pytest.mark.slow
# A paper-layout checkpoint trained as `pst-yolo demo` trains its yolo11n-pst (25 epochs at 128 px on the generated
# demo set, seed 0; mAP50-95 0.174 at its stored k=0), validated on the first VAL_IMAGES images of the demo's
# validation set.
DEMO_CHECKPOINT = Path(__file__).parent / "data" / "yolo11n-pst-demo.pt"
VAL_IMAGES = 8


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from pst_yolo.data import make_detection_dataset

    root = tmp_path_factory.mktemp("kernels_executed")
    data = make_detection_dataset(root / "demo", n_train=256, n_val=VAL_IMAGES, imgsz=128)  # the demo's images
    return kernel_check.in_subprocess(["--weights", str(DEMO_CHECKPOINT), "--data", str(data), "--val-ks", "0"])


def _rows(report, **want):
    return [r for r in report["rows"] if all(r[k] == v for k, v in want.items())]


def _require(report, kernel):
    if kernel in report["missing"]:
        pytest.skip(f"{kernel} not run: {report['missing'][kernel]}")


def test_every_coarse_shape_of_the_shipped_layouts_is_checked(report):
    keys = {r["m"] for r in report["shapes"]}
    # 128 px: 16 and 64 keys; 160: 25 and 100 (odd 5 x 5); 320: 400; 640: 1600; 1280: 6400; 480 x 352: 165 and 660
    assert {16, 25, 64, 100, 165, 400, 660, 1600, 6400} <= keys, sorted(keys)
    assert all(r["d"] == 32 for r in report["shapes"])  # PST's head dim; the check also runs 64 (the adapter's padding)


def test_sage_library_itself_is_wrong_when_the_key_count_is_not_a_multiple_of_64(report):
    """The library's kernel, called through pst-yolo's adapter function (no routing): exact to int8 where the keys
    fill whole blocks of 64, and far outside that tolerance elsewhere (its padded keys join the softmax). If a new
    release fixes this, this test says so and the rule in pst_yolo.attention._sage_supports can go."""
    _require(report, "sage")
    direct = _rows(report, kernel="sage", direct=True)
    assert direct
    for r in direct:
        assert r["ok"] == (r["m"] % 64 == 0), (r["m"], r["d"], r["dtype"], r["mean_err"], r["tol_mean"])


def test_sage_backend_within_int8_tolerance_at_every_shape(report):
    """``PST_ATTN=sage`` as a PST layer calls it: within the exact-int8 error (pst_yolo.kernel_check's tolerance) at
    every shape, both half dtypes, head dims 32 and 64; served by sageattention where it is exact, else by SDPA."""
    _require(report, "sage")
    rows = _rows(report, kernel="sage", direct=False)
    assert {r["dtype"] for r in rows} == {"float16", "bfloat16"} and {r["d"] for r in rows} == {32, 64}
    bad = [(r["m"], r["d"], r["dtype"], r["served"], r["mean_err"], r["tol_mean"]) for r in rows if not r["ok"]]
    assert not bad, bad
    for r in rows:
        assert r["served"] == ("sage" if r["m"] % 64 == 0 else "sdpa"), (r["m"], r["served"])
    assert any(r["same_keys"] and r["served"] == "sage" for r in rows)  # zero quantisation scale: still exact


def test_flash_backend_float16_every_shape_output_and_log_sum_exp(report):
    """FlashAttention's Triton backend through pst-yolo's ``flash`` adapters: output and the log-sum-exp that the
    ``lse`` scores use, float16 (bfloat16 under the interpreter is wrong in the library itself: checked on a GPU)."""
    _require(report, "flash")
    rows = _rows(report, kernel="flash")
    assert rows and {r["dtype"] for r in rows} == {"float16"}
    bad = [(r["m"], r["d"], r["direct"], r["mean_err"], r.get("lse_max_err")) for r in rows if not r["ok"]]
    assert not bad, bad
    assert all(r["served"] == "flash" for r in rows)
    assert all(r["lse_shape_ok"] for r in rows if r["direct"])


@pytest.mark.parametrize("kernel", ["sage", "flash"])
def test_whole_model_with_the_kernel_agrees_with_reference(report, kernel):
    _require(report, kernel)
    rows = [r for r in report["models"] if r["kernel"] == kernel]
    assert {r["k"] for r in rows} == {0, 8}
    for r in rows:
        assert r["psa_corr"] > 0.9999 and r["psa_max_rel"] < 0.01, r
        assert r["corr"] > 0.9999, r
    k0 = next(r for r in rows if r["k"] == 0)
    assert k0["served"] == {kernel: 2}  # both PSA layers' coarse passes ran the library's kernel


def test_trained_checkpoint_validates_the_same_with_the_kernel(report):
    """The demo's trained paper-layout checkpoint through Ultralytics' validator with each kernel (its PSA layers in
    float16) against float32 ``reference``: at 256 px every coarse key count is a multiple of 64, so the library's kernel
    serves both PSA layers of every batch; the detections' mAP50-95 within 0.002, the raw outputs correlated."""
    rows = report["val"]
    assert {r["kernel"] for r in rows} == {"sage", "flash"} - set(report["missing"])
    for r in rows:
        assert r["k"] == 0 and r["imgsz"] == [[256, 256]], r
        assert r["served"] == {r["kernel"]: 2 * VAL_IMAGES // 8}, r  # two PSA layers, one batch of 8
        assert r["map_reference"] > 0.05, r  # a trained model: detections to compare
        assert abs(r["map_kernel"] - r["map_reference"]) <= 0.002, r
        assert r["corr"] > 0.9999, r
