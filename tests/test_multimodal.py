"""Images and sounds in the prompt (libmtmd), on a tiny random-weight SmolVLM and Qwen2-Audio made here
(scripts/make_vision_model.py): the same greedy text as llama.cpp's own llama-mtmd-cli from the same
source, the chunks libmtmd reports, every way of giving a medium, hostile inputs, the cache keeping an
image across turns, the Engine, chat messages with media parts and the server."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mullama import Context, Media, Model, Projector, SamplerParams
from mullama.engine import Engine

from .conftest import LLAMA_SRC
from .images import bmp, pattern, png, png_header_claiming, wav

GREEDY = SamplerParams.greedy()  # llama-mtmd-cli's --temp 0: no repetition penalty either
N = 16
JPEG = LLAMA_SRC / "tools" / "mtmd" / "test-1.jpeg"


def chatml(user: str) -> str:
    """What llama-mtmd-cli makes of ``-p USER`` with this model's template (ChatML, one user turn)."""
    return f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def files() -> dict[str, Path]:
    from make_vision_model import ensure_vision_model
    return ensure_vision_model()


@pytest.fixture(scope="module")
def mtmd_cli() -> Path:
    from make_vision_model import ensure_mtmd_cli
    return ensure_mtmd_cli()


@pytest.fixture(scope="module")
def vlm(files: dict[str, Path]) -> Iterator[tuple[Model, Projector]]:
    model = Model.load(files["model"])
    proj = Projector.load(files["mmproj"], model)
    yield model, proj
    proj.close()
    model.close()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Images of several sizes and formats: test-1.jpeg (640x488: a 2x2 grid), a wide PNG (2:1: 2x1),
    a small square BMP, and a PNG the array test decodes back exactly."""
    d = tmp_path_factory.mktemp("images")
    out = {"jpeg": JPEG}
    for name, data in (("wide.png", png(pattern(60, 150, 1))), ("square.bmp", bmp(pattern(40, 40, 2))),
                       ("array.png", png(pattern(90, 70, 3)))):
        (d / name).write_bytes(data)
        out[name.split(".")[0]] = d / name
    return out


def context(vlm: tuple[Model, Projector], **kw: Any) -> Context:
    model, proj = vlm
    return Context(model, n_ctx=1024, projector=proj, **kw)


def greedy_text(vlm: tuple[Model, Projector], user: str, media: list[Any]) -> str:
    with context(vlm) as ctx:
        return ctx.generate(chatml(user), N, GREEDY, media=media, ignore_eos=True)


# -- the reference: llama.cpp's own tool ----------------------------------------------------------


@pytest.mark.parametrize("name,user", [
    ("jpeg", "<__media__>What is in the image?"),
    ("wide", "Describe <__media__> briefly."),
    ("square", "<__media__>"),
])
def test_greedy_text_and_chunks_equal_llama_mtmd_cli(vlm: tuple[Model, Projector], images: dict[str, Path],
                                                     mtmd_cli: Path, files: dict[str, Path], name: str,
                                                     user: str) -> None:
    from make_vision_model import mtmd_cli_generate
    ref = mtmd_cli_generate(mtmd_cli, files["model"], files["mmproj"], [images[name]], user, n_predict=N)
    _, proj = vlm
    prompt = proj.tokenize(chatml(user), [images[name]])
    image_chunks = [c for c in prompt.chunks if c.kind == "image"]
    assert len(image_chunks) == ref["image_chunks"] and sum(c.n_tokens for c in image_chunks) == ref["image_tokens"]
    assert len(prompt.chunks) == ref["chunks"] and prompt.n_tokens == ref["prompt_tokens"]
    # the grid follows the aspect ratio: 2x2 + overview (5 tiles of 4 embeddings), 2x1 + overview
    assert ref["image_tokens"] == {"jpeg": 20, "wide": 12, "square": 20}[name]
    assert greedy_text(vlm, user, [images[name]]) == ref["text"]


def test_two_images_in_one_prompt_equal_llama_mtmd_cli(vlm: tuple[Model, Projector], images: dict[str, Path],
                                                       mtmd_cli: Path, files: dict[str, Path]) -> None:
    from make_vision_model import mtmd_cli_generate
    user = "Compare <__media__> with <__media__>."
    pair = [images["wide"], images["jpeg"]]
    ref = mtmd_cli_generate(mtmd_cli, files["model"], files["mmproj"], pair, user, n_predict=N)
    assert ref["image_tokens"] == 32
    text = greedy_text(vlm, user, pair)
    assert text == ref["text"]
    # in the other order the prompt differs, and so does its cache identity
    _, proj = vlm
    ab, ba = proj.tokenize(chatml(user), pair), proj.tokenize(chatml(user), pair[::-1])
    assert ab.cache_ids != ba.cache_ids and ab.n_pos == ba.n_pos


def test_streaming_and_async_give_the_same_text(vlm: tuple[Model, Projector], images: dict[str, Path]) -> None:
    user = "<__media__>What is in the image?"
    whole = greedy_text(vlm, user, [images["jpeg"]])
    with context(vlm) as ctx:
        pieces = list(ctx.generate_stream(chatml(user), N, GREEDY, media=[images["jpeg"]], ignore_eos=True))
    assert len(pieces) > 1 and "".join(pieces) == whole
    with context(vlm) as ctx:
        assert asyncio.run(ctx.agenerate(chatml(user), N, GREEDY, media=[images["jpeg"]], ignore_eos=True)) == whole
    with context(vlm) as ctx:
        done = ctx.complete(chatml(user), N, GREEDY, media=[images["jpeg"]], ignore_eos=True, logprobs=2)
    assert done.text == whole and done.logprobs is not None and len(done.logprobs) == N


# -- every way of giving an image ------------------------------------------------------------------


def test_path_bytes_array_and_media_give_the_same_tokens(vlm: tuple[Model, Projector],
                                                         images: dict[str, Path]) -> None:
    _, proj = vlm
    path = images["array"]
    arr = pattern(90, 70, 3)  # what array.png holds, pixel for pixel
    user = "<__media__>Tell me."
    made = proj.media(arr)
    assert (made.kind, made.width, made.height, made.n_bytes) == ("image", 70, 90, 70 * 90 * 3)
    results = {}
    for how, source in (("path", path), ("str", str(path)), ("bytes", path.read_bytes()),
                        ("bytearray", bytearray(path.read_bytes())), ("array", arr), ("media", made),
                        ("fortran array", np.asfortranarray(arr))):
        with context(vlm) as ctx:
            results[how] = ctx.complete(chatml(user), N, GREEDY, media=[source], ignore_eos=True).tokens
        assert proj.tokenize(chatml(user), [source]).n_tokens == proj.tokenize(chatml(user), [path]).n_tokens
    assert len({tuple(t) for t in results.values()}) == 1, results
    # the same file gives the same id however it is given; an array has its own
    assert proj.media(path).id == proj.media(path.read_bytes()).id != made.id
    assert proj.media(arr).id == made.id


def test_chat_messages_with_image_parts(vlm: tuple[Model, Projector], images: dict[str, Path]) -> None:
    import base64
    _, proj = vlm
    data_url = "data:image/jpeg;base64," + base64.b64encode(JPEG.read_bytes()).decode()
    for part in ({"type": "image", "image": str(JPEG)}, {"type": "image_url", "image_url": {"url": data_url}}):
        prompt, media = proj.apply_chat_template(
            [{"role": "user", "content": [part, {"type": "text", "text": "What is in the image?"}]}])
        assert prompt.count(proj.marker) == 1 and len(media) == 1
        with context(vlm) as ctx:
            text = ctx.generate(prompt, N, GREEDY, media=media, ignore_eos=True)
        model, _ = vlm
        plain = model.apply_chat_template([("user", f"{proj.marker}What is in the image?")])
        assert prompt == plain  # the model's own template (SmolLM2's adds a system message)
        with context(vlm) as ctx:
            assert text == ctx.generate(plain, N, GREEDY, media=[JPEG], ignore_eos=True)
    with pytest.raises(ValueError, match="remote image URLs"):
        proj.apply_chat_template([{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}])
    with pytest.raises(ValueError, match="base64"):
        proj.apply_chat_template([{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]}])
    with pytest.raises(ValueError, match="unsupported content part type 'video'"):
        proj.apply_chat_template([{"role": "user", "content": [{"type": "video", "video": "x"}]}])


# -- the cache keeps images ------------------------------------------------------------------------


def test_a_follow_up_turn_does_not_encode_the_image_again(vlm: tuple[Model, Projector],
                                                          images: dict[str, Path]) -> None:
    model, proj = vlm
    turn1 = chatml("<__media__>What is in the image?")
    with context(vlm) as ctx:
        answer = ctx.generate(turn1, N, GREEDY, media=[JPEG], ignore_eos=True)
        first = proj.tokenize(turn1, [JPEG])
        assert ctx.last_prompt_evaluated == first.n_pos
        turn2 = turn1 + answer + "<|im_end|>\n<|im_start|>user\nAnd the colours?<|im_end|>\n<|im_start|>assistant\n"
        follow = ctx.generate(turn2, N, GREEDY, media=[JPEG], ignore_eos=True)
        second = proj.tokenize(turn2, [JPEG])
        # only the new text after the cached prefix (the first turn, its image and answer) was evaluated
        assert ctx.last_prompt_evaluated < second.n_pos - first.n_pos + 2
        assert all(c.kind == "text" for c in second.chunks[-1:])
        # another image in the same place is no prefix: evaluated from there on
        ctx.generate(turn1, N, GREEDY, media=[images["square"]], ignore_eos=True)
        assert ctx.last_prompt_evaluated > first.n_pos - 10
    with context(vlm) as fresh:
        assert fresh.generate(turn2, N, GREEDY, media=[JPEG], ignore_eos=True) == follow


# -- hostile input: clear errors, the process alive ------------------------------------------------


def test_hostile_media_are_clear_errors(vlm: tuple[Model, Projector], tmp_path: Path, files: dict[str, Path]) -> None:
    model, proj = vlm
    good = png(pattern(32, 32))
    cases: list[tuple[Any, type[Exception], str]] = [
        (good[: len(good) // 2], ValueError, "could not be decoded.*PNG"),
        (png_header_claiming(20000, 20000), ValueError, "20000x20000 PNG image .* above max_image_pixels"),
        (png_header_claiming(0, 5), ValueError, "size of 0x5"),
        (b"GIF89a\x10\x27\x10\x27" + b"\x00" * 20, ValueError, "10000x10000 GIF image .* above max_image_pixels"),
        (b"just some text, not an image", ValueError, "not a PNG, JPEG, BMP, GIF image"),
        # a TGA header claiming 26000x26000: a format whose size is not checked before decoding is refused
        (b"\x00\x00\x02" + b"\x00" * 9 + bytes([0x90, 0x65, 0x90, 0x65, 24, 0]) + b"\x00" * 8, ValueError,
         "not a PNG, JPEG, BMP, GIF image"),
        (good[:20], ValueError, "PNG header is truncated"),
        (b"", ValueError, "empty"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", ValueError, "WebP"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", ValueError, "WAV audio, but this projector takes no audio"),
        (np.zeros((4, 4), np.uint8), ValueError, r"shape \(height, width, 3\)"),
        (np.zeros((0, 4, 3), np.uint8), ValueError, "no pixels"),
        (np.zeros(16, np.float32), ValueError, "takes no audio"),
        (np.zeros((4, 4, 3), np.int16), TypeError, "uint8"),
        (12, TypeError, "a medium must be"),
        (tmp_path / "missing.png", ValueError, "not found"),
        (tmp_path, ValueError, "directory"),
    ]
    notes = tmp_path / "notes.png"
    notes.write_text("this is not a picture")
    cases.append((notes, ValueError, "not a PNG, JPEG, BMP, GIF image"))
    for source, kind, pattern_ in cases:
        with pytest.raises(kind, match=pattern_):
            proj.media(source)
    tiny = proj.media(png(pattern(1, 1)))  # a 1x1 image is an image: libmtmd scales it up
    assert (tiny.width, tiny.height) == (1, 1)
    with context(vlm) as ctx:
        prompt = chatml("<__media__>What?")
        with pytest.raises(ValueError, match="1 media marker.* but 0 media were given"):
            ctx.generate(prompt, 4, GREEDY, media=[])
        with pytest.raises(ValueError, match="0 media marker.* but 1 medium was given"):
            ctx.generate(chatml("What?"), 4, GREEDY, media=[JPEG])
        with pytest.raises(TypeError, match="must be text"):
            ctx.generate(model.tokenize("hi <__media__>"), 4, GREEDY, media=[JPEG])
        with pytest.raises(TypeError, match="list of media"):
            ctx.generate(prompt, 4, GREEDY, media=JPEG)  # type: ignore[arg-type]
        assert ctx.generate(prompt, 4, GREEDY, media=[tiny], ignore_eos=True)
        # a saved state records token ids only: a cache that holds an image cannot be saved
        with pytest.raises(ValueError, match="cannot record"):
            ctx.state_bytes()
        # media=[] with no marker is a plain prompt
        assert ctx.generate(chatml("Hi"), 2, GREEDY, media=[], ignore_eos=True)
    with Context(model, n_ctx=256) as plain, pytest.raises(ValueError, match="no projector"):
        plain.generate(prompt, 4, GREEDY, media=[JPEG])
    with pytest.raises(ValueError, match="n_embd"):
        Projector.load(files["wrong_mmproj"], model)
    with pytest.raises(RuntimeError, match="Failed to load projector"):
        Projector.load(tmp_path / "missing.gguf", model)
    small = Projector.load(files["mmproj"], model, max_image_pixels=100, max_media_bytes=1000)
    with pytest.raises(ValueError, match="max_media_bytes=1000"):
        small.media(JPEG)
    with pytest.raises(ValueError, match="above max_image_pixels=100"):
        small.media(pattern(20, 20))
    small.close()
    with pytest.raises(ValueError, match="another Projector"):
        Projector.load(files["mmproj"], model).media(tiny)


def test_a_context_that_cannot_hold_the_image_is_a_clear_error(vlm: tuple[Model, Projector]) -> None:
    model, proj = vlm
    with Context(model, n_ctx=256, projector=proj) as ctx:
        from mullama import ContextFullError
        long_text = " ".join(["word"] * (ctx.n_ctx - 30))
        with pytest.raises(ContextFullError, match="n_ctx=256"):
            ctx.generate(chatml(long_text + "<__media__>What is in the image?"), 4, GREEDY, media=[JPEG])
        assert ctx.generate(chatml("Hi"), 2, GREEDY, ignore_eos=True)  # still usable


def test_projector_and_context_argument_checks(vlm: tuple[Model, Projector], files: dict[str, Path]) -> None:
    model, proj = vlm
    with pytest.raises(TypeError, match="Projector"):
        Context(model, projector="mmproj.gguf")  # type: ignore[arg-type]
    other = Model.load(files["model"])
    try:
        with pytest.raises(ValueError, match="another Model"):
            Context(other, projector=proj)
    finally:
        other.close()
    with pytest.raises(TypeError, match="mullama.Model"):
        Projector.load(files["mmproj"], "model")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="image_min_tokens=9 is above image_max_tokens=4"):
        Projector.load(files["mmproj"], model, image_min_tokens=9, image_max_tokens=4)
    assert proj.supports_vision and not proj.supports_audio and proj.audio_sample_rate is None
    assert not proj.uses_mrope and proj.marker == "<__media__>" and proj.model is model
    assert isinstance(proj.media(JPEG), Media)


# -- the Engine: media per request -----------------------------------------------------------------


def test_engine_requests_with_media_equal_a_context(vlm: tuple[Model, Projector], images: dict[str, Path]) -> None:
    model, proj = vlm
    asks = [("<__media__>What is in the image?", [JPEG]), ("Describe <__media__> briefly.", [images["wide"]]),
            ("Compare <__media__> with <__media__>.", [images["wide"], JPEG]), ("No image here.", None)]
    want = [greedy_text(vlm, user, media or []) if media else
            Context(model, n_ctx=1024).generate(chatml(user), N, GREEDY, ignore_eos=True) for user, media in asks]
    with Engine(model, parallel=3, n_ctx=512, projector=proj) as engine:
        reqs = [engine.submit(chatml(user), N, GREEDY, media=media, ignore_eos=True) for user, media in asks]
        got = [r.text() for r in reqs]
        assert got == want
        with pytest.raises(ValueError, match="could not be decoded"):
            engine.submit(chatml("<__media__>"), N, GREEDY, media=[png(pattern(8, 8))[:60]])
        # (this model frames every image in text: its prompts never end with a medium)
        # media=[] without a marker is a plain request, and the engine goes on
        assert engine.submit(chatml("No image here."), N, GREEDY, media=[], ignore_eos=True).text() == want[3]
        # requests from several threads at once
        out: list[str] = [""] * 4

        def ask(i: int) -> None:
            out[i] = engine.submit(chatml(asks[i % 2][0]), N, GREEDY, media=asks[i % 2][1], ignore_eos=True).text()
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert out == [want[0], want[1], want[0], want[1]]
    # the same conversation again reuses the sequence that holds it, images included
    with Engine(model, parallel=1, n_ctx=512, projector=proj) as engine:
        first = engine.submit(chatml(asks[2][0]), N, GREEDY, media=asks[2][1], ignore_eos=True)
        assert first.text() == want[2] and first.prompt_evaluated == first.prompt_tokens
        again = engine.submit(chatml(asks[2][0]), N, GREEDY, media=asks[2][1], ignore_eos=True)
        assert again.text() == want[2] and again.prompt_evaluated == 1
    with Engine(model, parallel=1, n_ctx=256) as plain, pytest.raises(ValueError, match="no projector"):
        plain.submit(chatml("<__media__>"), N, GREEDY, media=[JPEG])


# -- the server: image_url parts through the openai client ------------------------------------------


@pytest.fixture(scope="module")
def vision_server(files: dict[str, Path]) -> Iterator[Any]:
    pytest.importorskip("openai")
    from mullama.server import ServeOptions

    from .test_server import KEY, Server
    s = Server(ServeOptions(model=files["model"], mmproj=files["mmproj"], parallel=2, n_ctx=1024, api_key=KEY,
                            model_id="tiny-vlm"))
    try:
        yield s
    finally:
        s.stop()


def _image_message(data: bytes, kind: str = "jpeg", text: str = "What is in the image?") -> list[dict[str, Any]]:
    import base64
    url = f"data:image/{kind};base64," + base64.b64encode(data).decode()
    return [{"role": "user", "content": [{"type": "text", "text": text},
                                         {"type": "image_url", "image_url": {"url": url}}]}]


def test_server_answers_image_messages_as_the_context_does(vision_server: Any, vlm: tuple[Model, Projector],
                                                           images: dict[str, Path]) -> None:
    import openai

    from mullama.server.protocol import Generation
    _, proj = vlm
    client = vision_server.client()
    for path, kind in ((JPEG, "jpeg"), (images["wide"], "png")):
        messages = _image_message(path.read_bytes(), kind)
        prompt, media = proj.apply_chat_template(messages)
        with context(vlm) as ctx:  # with the server's own sampling for temperature 0
            want = ctx.generate(prompt, N, Generation({"temperature": 0}).params, media=media)
        got = client.chat.completions.create(model="tiny-vlm", messages=messages, max_tokens=N, temperature=0)
        assert got.choices[0].message.content == want
        assert got.usage.prompt_tokens == proj.tokenize(prompt, media).n_pos
        stream = client.chat.completions.create(model="tiny-vlm", messages=messages, max_tokens=N, temperature=0,
                                                stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == want
    bad = [(_image_message(b"not an image at all"), "not a PNG, JPEG"),
           (_image_message(png_header_claiming(20000, 20000), "png"), "max_image_pixels"),
           (_image_message(png(pattern(8, 8))[:40], "png"), "could not be decoded"),
           ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,%%"}}]}],
            "base64"),
           ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/x.png"}}]}],
            "remote image URLs"),
           ([{"role": "user", "content": [{"type": "text", "text": "two markers <__media__>"},
                                          {"type": "image_url", "image_url": {"url": "data:image/png;base64,"
                                                                              + _b64(png(pattern(8, 8)))}}]}],
            "marker")]
    for messages, why in bad:
        with pytest.raises(openai.BadRequestError, match=why):
            client.chat.completions.create(model="tiny-vlm", messages=messages, max_tokens=4)
    # and it still answers
    assert client.chat.completions.create(model="tiny-vlm", messages=_image_message(JPEG.read_bytes()),
                                          max_tokens=2).choices[0].message.content is not None


def _b64(data: bytes) -> str:
    import base64
    return base64.b64encode(data).decode()


def test_a_server_without_a_projector_refuses_images(files: dict[str, Path]) -> None:
    openai = pytest.importorskip("openai")
    from mullama.server import ServeOptions

    from .test_server import KEY, Server
    s = Server(ServeOptions(model=files["model"], parallel=1, n_ctx=256, api_key=KEY, model_id="tiny"))
    try:
        with pytest.raises(openai.BadRequestError, match="--mmproj"):
            s.client().chat.completions.create(model="tiny", messages=_image_message(JPEG.read_bytes()), max_tokens=2)
    finally:
        s.stop()


def test_remote_images_are_fetched_with_limits(tmp_path: Path) -> None:
    import http.server

    from mullama.server import protocol as P
    from mullama.server.media import fetch, fetch_remote_media
    body = png(pattern(16, 16))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            if self.path == "/cat.png":
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            elif self.path == "/big.png":
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"\0" * 5000)
            else:
                self.send_error(404)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        msgs = fetch_remote_media([{"role": "user", "content": [
            {"type": "text", "text": "see"}, {"type": "image_url", "image_url": {"url": base + "/cat.png"}}]}])
        assert msgs[0]["content"][1] == {"type": "image", "image": body}
        with pytest.raises(P.ApiError, match="larger than the limit of 1000"):
            fetch(base + "/big.png", "x", max_bytes=1000)
        with pytest.raises(P.ApiError, match="HTTP status 404"):
            fetch(base + "/missing.png", "x")
        with pytest.raises(P.ApiError, match="could not fetch"):
            fetch("http://127.0.0.1:9/none.png", "x", timeout_s=2)
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_text_model_without_the_image_template_tokens_is_a_clear_error(files: dict[str, Path],
                                                                          tmp_path: Path) -> None:
    """The same embedding width but SmolLM2's plain vocabulary: libmtmd finds none of <global-img>,
    <row_1_col_1>... (it would put -1 into the prompt, which llama_decode refuses)."""
    import subprocess
    import sys
    out = tmp_path / "plain-vocab.gguf"
    subprocess.run([sys.executable, str(Path(__file__).parents[1] / "benchmarks" / "make_model.py"), "--preset", "tiny",
                    "--n-embd", "64", "--ftype", "f16", "--out", str(out)], check=True, capture_output=True)
    with Model.load(out) as model:
        proj = Projector.load(files["mmproj"], model)
        with pytest.raises(ValueError, match="lacks special tokens"):
            proj.tokenize("<__media__>What?", [JPEG])
        with Context(model, n_ctx=256, projector=proj) as ctx:
            with pytest.raises(ValueError, match="lacks special tokens"):
                ctx.generate("<__media__>What?", 4, GREEDY, media=[JPEG])
            assert ctx.generate("Still fine?", 2, GREEDY, ignore_eos=True)
        proj.close()


def test_cli_run_with_an_image(files: dict[str, Path], vlm: tuple[Model, Projector]) -> None:
    import subprocess
    import sys
    user = "What is this?"
    proc = subprocess.run([sys.executable, "-m", "mullama", "run", str(files["model"]), user, "--mmproj",
                           str(files["mmproj"]), "--image", str(JPEG), "--chat-template", "-n", str(N), "--temp", "0"],
                          capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr
    model, proj = vlm
    with context(vlm) as ctx:
        want = ctx.generate(model.apply_chat_template([("user", proj.marker + user)]), N, GREEDY, media=[JPEG])
    assert proc.stdout == want + "\n"
    bad = subprocess.run([sys.executable, "-m", "mullama", "run", str(files["model"]), user, "--image", str(JPEG)],
                         capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert bad.returncode != 0 and "--image needs --mmproj" in bad.stderr


# -- sounds: a tiny Qwen2-Audio ------------------------------------------------------------------------

MP3 = LLAMA_SRC / "tools" / "mtmd" / "test-2.mp3"


@pytest.fixture(scope="module")
def audio_files() -> dict[str, Path]:
    from make_vision_model import ensure_audio_model
    return ensure_audio_model()


@pytest.fixture(scope="module")
def alm(audio_files: dict[str, Path]) -> Iterator[tuple[Model, Projector]]:
    model = Model.load(audio_files["model"])
    proj = Projector.load(audio_files["mmproj"], model)
    yield model, proj
    proj.close()
    model.close()


def test_audio_equals_llama_mtmd_cli(alm: tuple[Model, Projector], audio_files: dict[str, Path], mtmd_cli: Path,
                                     tmp_path: Path) -> None:
    from make_vision_model import mtmd_cli_generate
    model, proj = alm
    assert proj.supports_audio and not proj.supports_vision and proj.audio_sample_rate == 16000
    user = "<__media__>What do you hear?"
    ref = mtmd_cli_generate(mtmd_cli, audio_files["model"], audio_files["mmproj"], [MP3], user, n_predict=N)
    prompt = proj.tokenize(chatml(user), [MP3])
    audio = [c for c in prompt.chunks if c.kind == "audio"]
    assert len(audio) == ref["audio_chunks"] == 1 and audio[0].n_tokens == ref["audio_tokens"] == 750
    with Context(model, n_ctx=2048, projector=proj) as ctx:
        assert ctx.generate(chatml(user), N, GREEDY, media=[MP3], ignore_eos=True) == ref["text"]
    # samples as an array, and the same samples as a WAV file, in both tools
    t = np.arange(16000, dtype=np.float32) / 16000
    sine = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    (tmp_path / "sine.wav").write_bytes(wav(sine))
    ref = mtmd_cli_generate(mtmd_cli, audio_files["model"], audio_files["mmproj"], [tmp_path / "sine.wav"], user,
                            n_predict=N)
    for source in (sine, wav(sine), tmp_path / "sine.wav"):
        with Context(model, n_ctx=2048, projector=proj) as ctx:
            assert ctx.generate(chatml(user), N, GREEDY, media=[source], ignore_eos=True) == ref["text"], type(source)


def test_hostile_audio_is_a_clear_error(alm: tuple[Model, Projector], vlm: tuple[Model, Projector]) -> None:
    _, proj = alm
    nan = np.zeros(1600, np.float32)
    nan[7] = np.nan
    for source, why in ((np.zeros(1, np.float32), "too short: at least 1600 samples"),
                        (np.zeros(0, np.float32), "too short"), (nan, "NaN"), (np.zeros((2, 8), np.float32), "1-D"),
                        (wav(np.zeros(1, np.float32)), "too short"), (wav(nan), "NaN"),
                        (JPEG, "an image, but this projector takes audio only"),
                        (pattern(8, 8), "an image, but this projector takes audio only")):
        with pytest.raises(ValueError, match=why):
            proj.media(source)
    assert proj.media(np.zeros(1600, np.float32)).width == 1600  # a tenth of a second: the shortest taken
    _, vision = vlm
    with pytest.raises(ValueError, match="MP3 audio, but this projector takes no audio"):
        vision.media(MP3)


def test_server_answers_input_audio_as_the_context_does(audio_files: dict[str, Path],
                                                        alm: tuple[Model, Projector]) -> None:
    import base64

    openai = pytest.importorskip("openai")
    from mullama.server import ServeOptions
    from mullama.server.protocol import Generation

    from .test_server import KEY, Server
    model, proj = alm
    messages = [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": base64.b64encode(MP3.read_bytes()).decode(), "format": "mp3"}},
        {"type": "text", "text": "What do you hear?"}]}]
    prompt, media = proj.apply_chat_template(messages)
    with Context(model, n_ctx=2048, projector=proj) as ctx:
        want = ctx.generate(prompt, N, Generation({"temperature": 0}).params, media=media)
    s = Server(ServeOptions(model=audio_files["model"], mmproj=audio_files["mmproj"], parallel=1, n_ctx=2048,
                            api_key=KEY, model_id="tiny-alm"))
    try:
        client = s.client()
        got = client.chat.completions.create(model="tiny-alm", messages=messages, max_tokens=N, temperature=0)
        assert got.choices[0].message.content == want
        bad = [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "%%%", "format": "wav"}}]}]
        with pytest.raises(openai.BadRequestError, match="base64"):
            client.chat.completions.create(model="tiny-alm", messages=bad, max_tokens=2)
        one = [{"role": "user", "content": [{"type": "input_audio", "input_audio": {
            "data": base64.b64encode(wav(np.zeros(1, np.float32))).decode(), "format": "wav"}}]}]
        with pytest.raises(openai.BadRequestError, match="too short"):
            client.chat.completions.create(model="tiny-alm", messages=one, max_tokens=2)
    finally:
        s.stop()


# -- M-RoPE: a tiny Qwen2-VL, whose images take fewer positions than embeddings -------------------------


@pytest.fixture(scope="module")
def qwen_files() -> dict[str, Path]:
    from make_vision_model import ensure_qwen2vl_model
    return ensure_qwen2vl_model()


@pytest.fixture(scope="module")
def qvl(qwen_files: dict[str, Path]) -> Iterator[tuple[Model, Projector]]:
    model = Model.load(qwen_files["model"])
    proj = Projector.load(qwen_files["mmproj"], model)
    yield model, proj
    proj.close()
    model.close()


def test_mrope_images_equal_llama_mtmd_cli(qvl: tuple[Model, Projector], qwen_files: dict[str, Path],
                                           mtmd_cli: Path, images: dict[str, Path]) -> None:
    from make_vision_model import mtmd_cli_generate
    model, proj = qvl
    assert proj.uses_mrope
    for user, media in (("<__media__>What is in the image?", [JPEG]),
                        ("Compare <__media__> with <__media__>.", [JPEG, images["wide"]])):
        ref = mtmd_cli_generate(mtmd_cli, qwen_files["model"], qwen_files["mmproj"], media, user, n_predict=N)
        prompt = proj.tokenize(chatml(user), media)
        pics = [c for c in prompt.chunks if c.kind == "image"]
        assert sum(c.n_tokens for c in pics) == ref["image_tokens"] and all(c.n_pos < c.n_tokens for c in pics)
        assert len(prompt.cache_ids) == prompt.n_pos < prompt.n_tokens
        with Context(model, n_ctx=2048, projector=proj) as ctx:
            text = ctx.generate(chatml(user), N, GREEDY, media=media, ignore_eos=True)
        assert text == ref["text"]
        with Engine(model, parallel=2, n_ctx=1024, projector=proj) as engine:
            assert engine.submit(chatml(user), N, GREEDY, media=media, ignore_eos=True).text() == text


def test_mrope_follow_up_turn_and_cells(qvl: tuple[Model, Projector]) -> None:
    """Positions after an M-RoPE image continue from its n_pos; the cache is budgeted in cells (n_tokens)."""
    from mullama import ContextFullError
    model, proj = qvl
    turn1 = chatml("<__media__>What is in the image?")
    with Context(model, n_ctx=2048, projector=proj) as ctx:
        answer = ctx.generate(turn1, N, GREEDY, media=[JPEG], ignore_eos=True)
        turn2 = turn1 + answer + "<|im_end|>\n<|im_start|>user\nAnd?<|im_end|>\n<|im_start|>assistant\n"
        follow = ctx.generate(turn2, N, GREEDY, media=[JPEG], ignore_eos=True)
        assert ctx.last_prompt_evaluated < 20
    with Context(model, n_ctx=2048, projector=proj) as fresh:
        assert fresh.generate(turn2, N, GREEDY, media=[JPEG], ignore_eos=True) == follow
    cells = proj.tokenize(turn1, [JPEG]).n_tokens
    two = chatml("<__media__><__media__>What?")
    with Context(model, n_ctx=512, projector=proj) as ctx:
        assert cells < 512 < proj.tokenize(two, [JPEG, JPEG]).n_tokens
        with pytest.raises(ContextFullError, match="n_ctx=512"):
            ctx.generate(two, 4, GREEDY, media=[JPEG, JPEG])
        with pytest.raises(ContextFullError, match="the context is full"):
            ctx.generate(turn1, 512, GREEDY, media=[JPEG], ignore_eos=True)
        assert ctx.generate(chatml("Hi"), 2, GREEDY, ignore_eos=True)
    with Engine(model, parallel=1, n_ctx=512, projector=proj) as engine:
        long = engine.submit(turn1, 512, GREEDY, media=[JPEG], ignore_eos=True)
        long.text()
        assert long.finish_reason == "length" and long.completion_tokens == 512 - cells + 1
        with pytest.raises(ContextFullError):
            engine.submit(two, 4, GREEDY, media=[JPEG, JPEG])
        assert engine.submit(turn1, N, GREEDY, media=[JPEG], ignore_eos=True).text()  # the engine lives on
