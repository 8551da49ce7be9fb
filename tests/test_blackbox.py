"""Black-box audits: the ReDiffuse feature, the variation back ends, the protocol server, and faults."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SAMPLE_DATA
from skimage.metrics import structural_similarity
from typer.testing import CliRunner
from variation_servers import Faults, running_server

from cdi_audit.blackbox import endpoints
from cdi_audit.blackbox.endpoints import (
    CommandVariation,
    EndpointUnavailable,
    HttpVariation,
    RateLimiter,
    RetryPolicy,
    TransientFailure,
    call_with_retries,
    parse_headers,
    redact_url,
)
from cdi_audit.blackbox.variation import (
    BlackBoxTarget,
    CallStore,
    EndpointInfo,
    LocalVariation,
    VariationBackend,
    VariationRequest,
    local_black_box,
    pixels_to_uint8,
    uint8_to_pixels,
)
from cdi_audit.cli import app
from cdi_audit.features.base import LatentBatch, NoiseSource
from cdi_audit.features.rediffuse import ReDiffuse, rediffuse_distances
from cdi_audit.inputs.images import scan_image_set
from cdi_audit.models.loading import load_target
from cdi_audit.pipeline.extraction import extract_features
from cdi_audit.pipeline.inputs import MIN_IMAGES
from cdi_audit.results.schema import ModelInfo

# The fewest images an audit accepts: the sample model's members stand out by far (Welch t about 13 on
# 10 + 10 images, p = 1/201, the smallest 200 permutations give), and every image costs 10 model calls.
IMAGES_PER_SET = MIN_IMAGES
CALLS_PER_IMAGE = 10  # rediffuse on a pixel model
TABLE_DRAWS = 2  # variations per image where the loopback test compares feature tables
SECRET = "sk-test-5f1e2d3c4b5a"


def normalised(text: str) -> str:
    return " ".join(text.replace("│", " ").split())


def run(*args) -> tuple[int, dict | None, str]:
    result = CliRunner().invoke(app, [str(arg) for arg in args], prog_name="cdi-audit")
    payload = json.loads(result.stdout) if result.stdout.strip() else None
    return result.exit_code, payload, result.stderr


# ---- the feature against a hand computation ---------------------------------------------------------

def skimage_ssim(first: np.ndarray, second: np.ndarray) -> float:
    """SSIM of (3, H, W) images in [-1, 1] as the spec defines it: [0, 1] range, 7x7 uniform window."""
    return structural_similarity((first.transpose(1, 2, 0) + 1) / 2, (second.transpose(1, 2, 0) + 1) / 2,
                                 win_size=7, data_range=1.0, channel_axis=2, use_sample_covariance=False)


def test_distances_are_the_norms_and_ssim_of_the_mean_variation() -> None:
    rng = np.random.default_rng(0)
    reference = rng.uniform(-1, 1, size=(2, 3, 12, 12))
    variations = reference[:, None] + rng.normal(0, 0.1, size=(2, 4, 3, 12, 12))
    values = rediffuse_distances(torch.from_numpy(variations), torch.from_numpy(reference)).numpy()
    for i in range(2):
        difference = variations[i].mean(axis=0) - reference[i]
        assert values[i, 0] == pytest.approx(np.sqrt((difference**2).sum()), rel=1e-12)
        assert values[i, 1] == pytest.approx(np.abs(difference).sum(), rel=1e-12)
        assert values[i, 2] == pytest.approx(skimage_ssim(variations[i].mean(axis=0), reference[i]), abs=1e-9)


class ShiftingBackend(VariationBackend):
    """A fake endpoint with a known answer: the image brightened by (seed mod 5) - 2 levels, or by
    ``reconstruction_shift`` at strength 0. It records every request."""

    remote = True

    def __init__(self, reconstruction_shift: int = 0) -> None:
        self.identity = self.display = "fake"
        self.requests: list[VariationRequest] = []
        self.reconstruction_shift = reconstruction_shift

    def vary(self, request: VariationRequest) -> np.ndarray:
        self.requests.append(request)
        shift = self.reconstruction_shift if request.strength == 0 else request.seed % 5 - 2
        return (request.image.astype(int) + shift).astype(np.uint8)


def fake_target(backend: VariationBackend, family: str = "pixel", store: CallStore | None = None,
                conditioning: str = "none") -> BlackBoxTarget:
    info = EndpointInfo(12, family, conditioning)
    description = ModelInfo(path="fake", fingerprint="f" * 64, family="fake", sample_size=12,
                            num_train_timesteps=None, prediction_type=None, device="remote", access="black")
    return BlackBoxTarget(backend, info, description, store)


def mid_grey_batch(count: int, captions: tuple[str, ...] | None = None) -> LatentBatch:
    """Images whose values stay in 10..245 so the fake shifts never clip."""
    rng = np.random.default_rng(1)
    uint8 = rng.integers(10, 246, size=(count, 12, 12, 3)).astype(np.uint8)
    pixels = torch.from_numpy(uint8).permute(0, 3, 1, 2).float() / 127.5 - 1
    return LatentBatch(pixels, tuple(f"{i:064x}" for i in range(count)), None, pixels, captions)


def test_rediffuse_through_a_fake_endpoint_matches_the_hand_computation() -> None:
    backend = ShiftingBackend()
    batch = mid_grey_batch(3, captions=("a cat", "a dog", "a boat"))
    noise = NoiseSource(7)
    extractor = ReDiffuse()
    values = extractor.extract(fake_target(backend, conditioning="text"), batch, noise).numpy()
    assert len(backend.requests) == 3 * CALLS_PER_IMAGE
    for i in range(3):
        seeds = [noise.generator_seed(batch.hashes[i], "rediffuse", "variation", d) & (2**31 - 1)
                 for d in range(CALLS_PER_IMAGE)]
        mine = backend.requests[i * CALLS_PER_IMAGE:(i + 1) * CALLS_PER_IMAGE]
        assert [r.seed for r in mine] == seeds
        assert {r.strength for r in mine} == {0.2} and {r.prompt for r in mine} == {batch.captions[i]}
        mean_shift = np.mean([s % 5 - 2 for s in seeds]) / 127.5  # in [-1, 1] units, the same for every entry
        entries = 3 * 12 * 12
        assert values[i, 0] == pytest.approx(abs(mean_shift) * np.sqrt(entries), rel=1e-5, abs=1e-5)
        assert values[i, 1] == pytest.approx(abs(mean_shift) * entries, rel=1e-5, abs=1e-4)
        image = batch.images[i].double().numpy()
        assert values[i, 2] == pytest.approx(skimage_ssim(image + mean_shift, image), abs=1e-6)


def test_on_latent_models_the_variations_are_compared_with_the_reconstruction() -> None:
    backend = ShiftingBackend(reconstruction_shift=3)
    target = fake_target(backend, family="latent")
    extractor = ReDiffuse.for_target(target)
    assert (extractor.timestep, extractor.draws, extractor.compare_reconstruction) == (30, 2, True)
    batch = mid_grey_batch(2)
    values = extractor.extract(target, batch, NoiseSource(0)).numpy()
    assert len(backend.requests) == 2 * 3 and sum(r.strength == 0 for r in backend.requests) == 2
    for i in range(2):
        seeds = [r.seed for r in backend.requests[2 * i:2 * i + 2]]
        offset = (np.mean([s % 5 - 2 for s in seeds]) - 3) / 127.5
        assert values[i, 1] == pytest.approx(abs(offset) * 3 * 12 * 12, rel=1e-5, abs=1e-4)


def test_completed_calls_are_stored_and_never_made_again(tmp_path: Path) -> None:
    first = ShiftingBackend()
    batch = mid_grey_batch(2)
    values = ReDiffuse().extract(fake_target(first, store=CallStore(tmp_path, "fake")), batch, NoiseSource(0))
    second = ShiftingBackend()
    target = fake_target(second, store=CallStore(tmp_path, "fake"))
    again = ReDiffuse().extract(target, batch, NoiseSource(0))
    assert len(first.requests) == 2 * CALLS_PER_IMAGE and second.requests == []
    assert target.calls_from_store == 2 * CALLS_PER_IMAGE and target.forward_rows == 0
    assert torch.equal(values, again)


# ---- the loopback protocol, end to end ---------------------------------------------------------------

class RememberingVariation(LocalVariation):
    """The sample model as the loopback servers' back end: each distinct request is computed when it first
    arrives, one at a time (the bytes a server running the model answers), and a repeat of it is answered
    from memory, as a deterministic endpoint may. The tests below send the same requests (same images, seed
    0), so the model's work is done once per module while every audit still makes each of its calls over
    HTTP, from a cold store of completed calls, and the server counts each call it answers."""

    def __init__(self, target) -> None:
        super().__init__(target, batch_size=1)
        self.answers: dict[str, np.ndarray] = {}

    def vary(self, request: VariationRequest) -> np.ndarray:
        key = request.digest()
        if key not in self.answers:
            self.answers[key] = super().vary(request)
        return self.answers[key].copy()


@pytest.fixture(scope="module")
def sample_backend() -> RememberingVariation:
    return RememberingVariation(load_target(SAMPLE_DATA / "model", torch.device("cpu")))


@pytest.fixture(scope="module")
def small_sets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The first IMAGES_PER_SET published and unpublished sample images."""
    root = tmp_path_factory.mktemp("small-sample")
    for role in ("published", "unpublished"):
        (root / role).mkdir()
        for path in sorted((SAMPLE_DATA / role).glob("*.png"))[:IMAGES_PER_SET]:
            shutil.copy(path, root / role / path.name)
    return root / "published", root / "unpublished"


def audit_args(small_sets, cache: Path, *model) -> list:
    published, unpublished = small_sets
    return ["check", published, "--reference", unpublished, *model, "--cache-dir", cache, "--json",
            "--permutations", "200", "--alpha", "0.01", "--jobs", "1", "--retry-backoff", "0.01"]


def test_the_loopback_endpoint_gives_the_local_black_box_features_and_verdict(
        sample_backend, small_sets, tmp_path: Path) -> None:
    records = [r for folder in small_sets for r in scan_image_set(folder).records]
    # The feature tables compare 2 variations per image (the first 2 of the audit's 10, the same seeds): the
    # bytes of each call are what is compared, and every call costs the model's work.
    extractor = ReDiffuse(draws=TABLE_DRAWS)
    batched = local_black_box(sample_backend.target)
    # Computed here, apart from the server's back end (which may remember answers another test asked for).
    one_by_one = BlackBoxTarget(LocalVariation(sample_backend.target, batch_size=1), batched.info, batched.description)
    local_table, _ = extract_features(records, one_by_one, [extractor], 0, 16)
    batched_table, _ = extract_features(records, batched, [extractor], 0, 16)
    with running_server(sample_backend) as server:
        remote = endpoints.open_endpoint(endpoints.EndpointSettings(url=server.url), None)
        assert (remote.sample_size, remote.info.family) == (32, "pixel")  # from the endpoint's own description
        remote_table, summary = extract_features(records, remote, [extractor], 0, 16)
        assert summary.model_calls == server.served == 2 * IMAGES_PER_SET * TABLE_DRAWS
        code, remote_result, _ = run(*audit_args(small_sets, tmp_path / "a", "--endpoint", server.url))
    # The server answers one request at a time: the same bytes as the local model run one image at a time.
    np.testing.assert_array_equal(remote_table.values, local_table.values)
    # Batched, a float rounding can move a pixel by one 8-bit level.
    np.testing.assert_allclose(batched_table.values, local_table.values, rtol=1e-4)
    local_code, local_result, _ = run(*audit_args(small_sets, tmp_path / "b", "--model", SAMPLE_DATA / "model",
                                                  "--access", "blackbox"))
    assert (code, remote_result["verdict"]) == (local_code, local_result["verdict"]) == (1, "evidence")
    assert remote_result["p_value"] == local_result["p_value"] < 0.01
    assert remote_result["features"] == ["rediffuse_l2", "rediffuse_l1", "rediffuse_ssim"]
    assert remote_result["model"]["access"] == local_result["model"]["access"] == "black"
    assert remote_result["model"]["endpoint"] == server.url and local_result["model"]["endpoint"] is None
    assert remote_result["configuration"]["endpoint"] == server.url
    assert remote_result["extraction"]["model_calls"] == 2 * IMAGES_PER_SET * CALLS_PER_IMAGE


def test_an_endpoint_that_fails_every_third_call_still_completes_the_audit(
        sample_backend, small_sets, tmp_path: Path) -> None:
    with running_server(sample_backend, Faults(fail_every=3)) as server:
        code, result, _ = run(*audit_args(small_sets, tmp_path, "--endpoint", server.url))
    assert (code, result["verdict"]) == (1, "evidence")
    assert server.served == 2 * IMAGES_PER_SET * CALLS_PER_IMAGE
    assert server.posts - server.posts // 3 == server.served  # every third post failed and was retried


def test_an_interrupted_audit_resumes_without_repeating_a_completed_call(
        sample_backend, small_sets, tmp_path: Path) -> None:
    expected = 2 * IMAGES_PER_SET * CALLS_PER_IMAGE
    arguments = audit_args(small_sets, tmp_path, "--retries", "2")
    with running_server(sample_backend, Faults(fail_after=100)) as server:
        code, payload, stderr = run(*arguments, "--endpoint", server.url)
        assert code == 4 and server.served == 100
        assert "HTTP 500" in normalised(stderr) and "resumes without repeating them" in normalised(stderr)
        assert payload["error"]["exit_code"] == 4
        server.faults.fail_after = None  # the quota is back
        code, result, _ = run(*arguments, "--endpoint", server.url)
    assert (code, result["verdict"]) == (1, "evidence")
    assert server.served == expected  # 100 calls in the first run, only the remaining ones in the second
    assert result["extraction"]["model_calls"] == expected - 100


@pytest.mark.parametrize(
    ("faults", "extra", "message"),
    [
        (Faults(delay=1.0), ["--endpoint-timeout", "0.2", "--retries", "1"], "no answer within 0.2 s"),
        (Faults(garbage=True), ["--retries", "1"], "answered with something that is not an image"),
    ],
)
def test_a_slow_or_nonsensical_endpoint_stops_the_audit_with_exit_4(
        sample_backend, small_sets, tmp_path: Path, faults: Faults, extra: list[str], message: str) -> None:
    with running_server(sample_backend, faults) as server:
        code, payload, stderr = run(*audit_args(small_sets, tmp_path, "--endpoint", server.url, *extra))
    assert code == 4 and payload["error"]["exit_code"] == 4
    assert message in normalised(stderr) and "failed 2 time(s) in a row" in normalised(stderr)


def test_an_unreachable_endpoint_exits_4(small_sets, tmp_path: Path, sample_backend) -> None:
    with running_server(sample_backend) as server:
        url = server.url  # a port that was free, now closed
    code, _, stderr = run(*audit_args(small_sets, tmp_path, "--endpoint", url, "--retries", "1"))
    assert code == 4
    assert "Connection refused" in normalised(stderr) and url in normalised(stderr)


def test_the_api_key_is_sent_but_never_shown_or_stored(
        sample_backend, small_sets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDI_TEST_API_KEY", SECRET)
    header = "Authorization: Bearer ${CDI_TEST_API_KEY}"
    faults = Faults(required_header=("Authorization", f"Bearer {SECRET}"))
    with running_server(sample_backend, faults) as server:
        url = server.url + f"?token={SECRET}"
        refused_code, _, refused = run(*audit_args(small_sets, tmp_path / "cache", "--endpoint", url, "--debug"))
        code, result, stderr = run(*audit_args(small_sets, tmp_path / "cache", "--endpoint", url, "--header",
                                               header, "--out", tmp_path / "out", "--debug"))
    assert refused_code == 4 and "HTTP 401" in normalised(refused) and "--header" in normalised(refused)
    assert (code, result["verdict"]) == (1, "evidence")
    assert result["model"]["endpoint"].endswith("?token=***")
    assert result["configuration"]["endpoint_headers"] == "Authorization"
    written = [stderr, refused, json.dumps(result)]
    for path in tmp_path.rglob("*"):
        written.append(str(path))
        if path.is_file():
            written.append(path.read_bytes().decode("latin-1"))
    assert not [text for text in written if SECRET in text]


# ---- the command back end ----------------------------------------------------------------------------

BRIGHTEN = """
import sys
from PIL import Image, ImageChops
source, target, strength, seed = sys.argv[1:5]
image = Image.open(source).convert("RGB")
ImageChops.add(image, Image.new("RGB", image.size, (int(seed) % 5,) * 3)).save(target)
"""


def test_a_command_endpoint_fills_its_placeholders_and_is_retried(tmp_path: Path) -> None:
    script = tmp_path / "vary.py"
    script.write_text(BRIGHTEN)
    backend = CommandVariation(f"{sys.executable} {script} {{input}} {{output}} {{strength}} {{seed}}")
    image = np.full((12, 12, 3), 100, np.uint8)
    assert (backend.vary(VariationRequest(image, 0.2, 13)) == 103).all()

    failing = CommandVariation(f"{sys.executable} -c 'import sys; sys.exit(3)' {{input}} {{output}}",
                               RetryPolicy(retries=2, backoff=0.0))
    with pytest.raises(EndpointUnavailable, match=r"failed 3 time\(s\) in a row \(last: exit status 3"):
        failing.vary(VariationRequest(image, 0.2, 13))
    with pytest.raises(ValueError, match=r"\{input\} and \{output\}"):
        CommandVariation("prog {seed}")


# ---- retries, rate limit, secrets -----------------------------------------------------------------

def test_retries_back_off_exponentially_and_honour_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []
    monkeypatch.setattr(endpoints.time, "sleep", waits.append)
    failures = iter([TransientFailure("503"), TransientFailure("429", retry_after=7.0), TransientFailure("503")])

    def attempt() -> str:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return "done"

    assert call_with_retries(attempt, RetryPolicy(retries=3, backoff=0.5), "a call") == "done"
    assert waits == [0.5, 7.0, 2.0]
    with pytest.raises(EndpointUnavailable, match=r"failed 2 time\(s\) in a row \(last: x\)"):
        call_with_retries(lambda: (_ for _ in ()).throw(TransientFailure("x")), RetryPolicy(1, 0.0), "a call")


def test_the_rate_limit_spaces_call_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(endpoints.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(endpoints.time, "sleep", lambda seconds: clock.__setitem__(0, clock[0] + seconds))
    limiter = RateLimiter(max_rps=4)
    starts = []
    for _ in range(5):
        limiter.wait()
        starts.append(clock[0])
    assert np.allclose(np.diff(starts), 0.25)
    unlimited = RateLimiter(None)
    unlimited.wait()
    assert clock[0] == starts[-1]


def test_urls_and_headers_are_shown_without_secrets() -> None:
    assert redact_url("https://user:pw@api.example.com:8443/v1/vary?key=abc&model=x") == \
        "https://***@api.example.com:8443/v1/vary?key=***&model=***"
    assert redact_url("http://127.0.0.1:8000/") == "http://127.0.0.1:8000/"
    headers = parse_headers(["Authorization: Bearer ${KEY}", "X-Org: acme"], {"KEY": "s3cret"})
    assert headers == {"Authorization": "Bearer s3cret", "X-Org": "acme"}
    with pytest.raises(ValueError, match="MISSING_KEY, which is not set") as error:
        parse_headers(["Authorization: ${MISSING_KEY}"], {})
    assert "Bearer" not in str(error.value)
    with pytest.raises(ValueError, match="Name: value"):
        parse_headers(["no separator"], {})
    with pytest.raises(ValueError, match="http:// or https://"):
        HttpVariation("ftp://example.com/vary")


# ---- the command line ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", SAMPLE_DATA / "model", "--access", "blackbox", "--features", "fast"],
         "need grey-box access (noise predictions at chosen timesteps), but this model gives only black-box access"),
        (["--model", SAMPLE_DATA / "model", "--endpoint", "http://127.0.0.1:9/"], "exactly one of --model PATH"),
        ([], "exactly one of --model PATH"),
        (["--endpoint", "http://127.0.0.1:9/", "--access", "blackbox"], "--access blackbox is for a local --model"),
        (["--endpoint-cmd", "prog {input} {output}"], "give the resolution it works at with --image-size"),
        (["--endpoint-cmd", "prog {seed}", "--image-size", "32"], "must contain {input} and {output}"),
        (["--endpoint", "http://127.0.0.1:9/", "--image-size", "32", "--header", "Authorization: ${NOT_SET_ANYWHERE}"],
         "environment variable NOT_SET_ANYWHERE, which is not set"),
    ],
)
def test_black_box_usage_errors_exit_2(small_sets, tmp_path: Path, extra: list, message: str) -> None:
    code, _, stderr = run(*audit_args(small_sets, tmp_path, *extra))
    assert code == 2
    assert message in normalised(stderr)


def test_pixels_round_trip_through_8_bit_exactly() -> None:
    levels = torch.arange(256, dtype=torch.float32).reshape(1, 1, 16, 16).expand(1, 3, 16, 16) / 127.5 - 1
    assert torch.equal(torch.from_numpy(pixels_to_uint8(levels)).permute(0, 3, 1, 2).float() / 127.5 - 1, levels)


# ---- latent models ------------------------------------------------------------------------------------

class RecordingVariation(LocalVariation):
    """The local back end of a server, noting the prompt of every request it answers."""

    def __init__(self, target) -> None:
        super().__init__(target)
        self.prompts: list[str | None] = []

    def vary(self, request: VariationRequest) -> np.ndarray:
        self.prompts.append(request.prompt)
        return super().vary(request)


@pytest.mark.slow
def test_a_text_to_image_model_behind_an_endpoint_gives_evidence_for_its_members(
        trained_text_to_image: Path, tmp_path: Path) -> None:
    root = trained_text_to_image
    backend = RecordingVariation(load_target(root / "model", torch.device("cpu")))
    with running_server(backend) as server:
        code, result, _ = run("check", root / "members", "--reference", root / "nonmembers", "--endpoint",
                              server.url, "--cache-dir", tmp_path, "--json", "--jobs", "1")
    assert (code, result["verdict"]) == (1, "evidence") and result["p_value"] < 0.01
    # Latent model: 2 variations at t=30 and one reconstruction (strength 0) per tested image (a group of
    # near-duplicate shapes within a set is tested once).
    tested = result["n_suspect"] + result["n_reference"]
    assert tested >= 60 and result["extraction"]["model_calls"] == server.served == tested * 3
    assert result["model"]["family"] == "image-to-image endpoint (latent model, text conditioning)"
    captions = {(root / "members" / f"{Path(image['path']).stem}.txt").read_text().strip()
                for image in result["images"] if image["role"] == "suspect"}
    assert len(captions) > 10 and captions <= set(backend.prompts) and None not in backend.prompts


def test_local_variations_of_a_class_conditional_model_follow_the_class(tmp_path: Path) -> None:
    from tiny_pipelines import save_tiny_dit

    target = load_target(save_tiny_dit(tmp_path / "dit"), torch.device("cpu"))
    backend = LocalVariation(target)
    image = np.random.default_rng(0).integers(0, 256, size=(16, 16, 3)).astype(np.uint8)
    first, again, other = (backend.vary(VariationRequest(image, 0.5, 3, class_label=label)) for label in (0, 0, 2))
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    with torch.no_grad():
        reconstruction = pixels_to_uint8(target.decode(target.encode(uint8_to_pixels(image[None]))))[0]
    assert np.array_equal(backend.vary(VariationRequest(image, 0.0, 3, class_label=0)), reconstruction)
    with pytest.raises(ValueError, match="needs a class_label"):
        backend.vary(VariationRequest(image, 0.5, 3))


# ---- cdi-audit serve ---------------------------------------------------------------------------------

def test_cdi_audit_serve_answers_the_protocol_on_loopback(tmp_path: Path) -> None:
    import os
    import socket
    import subprocess
    import time
    import urllib.request

    from cdi_audit.blackbox.server import is_loopback
    from cdi_audit.blackbox.variation import decode_png, encode_png

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "cdi_audit", "serve", str(SAMPLE_DATA / "model"), "--port", str(port), "--device",
         "cpu"], stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                info = json.loads(urllib.request.urlopen(url, timeout=1).read())
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "the server did not come up"
                time.sleep(0.2)
        image = np.random.default_rng(0).integers(0, 256, size=(32, 32, 3)).astype(np.uint8)
        post = urllib.request.Request(url + "?strength=0.2&seed=5", data=encode_png(image), method="POST",
                                      headers={"Content-Type": "image/png"})
        varied = decode_png(urllib.request.urlopen(post, timeout=30).read())
        bad = urllib.request.Request(url + "?strength=2&seed=5", data=encode_png(image), method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(bad, timeout=30)
        refusal = refused.value.read()  # before the server stops
    finally:
        server.terminate()
        stderr = server.communicate(timeout=30)[1].decode()
    assert info == {"protocol": "cdi-audit-variation/1", "sample_size": 32, "family": "pixel", "conditioning": "none"}
    local = LocalVariation(load_target(SAMPLE_DATA / "model", torch.device("cpu")), batch_size=1)
    # Another process with other threads: float rounding may move a pixel by one 8-bit level.
    difference = np.abs(varied.astype(int) - local.vary(VariationRequest(image, 0.2, 5)).astype(int))
    assert difference.max() <= 1 and (difference > 0).mean() < 0.01
    assert refused.value.code == 400 and b"strength must lie in [0, 1)" in refusal
    assert url in stderr.replace("\n", "")
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")
