"""The shared greedy loop (smallfit.backends.greedy), driven by a scripted fake model.

The tokenizers are small but behave as real ones do where incremental detokenisation is hard:
byte-level BPE (a character's UTF-8 bytes split over tokens, as GPT-2 and SmolLM2), SentencePiece
with byte fallback (a run of byte tokens that is not valid UTF-8 becomes one U+FFFD per byte,
earlier characters of the run too) and the leading space of a text stripped (as Llama 2), and a
decode that tidies spaces before punctuation (transformers' ``clean_up_tokenization_spaces``). Each is held
to what the loops did before: decode the whole output after every token and cut it at the first
stop sequence (``reference`` below). A real tokenizer (SmolLM2's) runs too where installed.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from smallfit.backends.greedy import GreedyModel, IncrementalDetokenizer, first_stop, generate
from smallfit.errors import SmallfitError
from smallfit.records import Completion, GenerationRequest
from tests.conftest import have_onnx_export, needs_models

EOS, SPECIAL = 0, 1  # ids 0 and 1 are special tokens: left out of the text
BYTE_PIECES = [b"", b"", b"Hello", b" world", b" caf", b"\xc3", b"\xa9", b"\xc3\xa9", b"\xf0\x9f",
               b"\x98", b"\x80", b"\xf0\x9f\x98\x80", b"\n", b"\n\n", b"Wor", b"ld", b".", b" .", b" ",
               b"e\xcc", b"\x81", b"\xe6\x97\xa5", b"\xe6", b"\x97", b"\xa5\xe6\x9c\xac", b"!", b" ,", b"ab"]
SP_PIECES = ["", "", "▁Hello", "▁world", "▁caf", "é", "<0xC3>", "<0xA9>", "<0xF0>", "<0x9F>", "<0x98>",
             "<0x80>", "▁", "▁.", ".", "\n", "▁日本", "ing", "▁run", "<0xE6>", "<0x97>", "<0xA5>", "▁▁"]


def byte_level(ids: Sequence[int]) -> str:
    return b"".join(BYTE_PIECES[i] for i in ids).decode("utf-8", "replace")


def sentencepiece(ids: Sequence[int]) -> str:
    """As Llama 2's decoder: byte fallback (a run of byte tokens is one string, or one U+FFFD per
    byte when it is not valid UTF-8), then the text's leading space stripped."""
    parts: list[str] = []
    run = bytearray()
    for piece in (SP_PIECES[i] for i in ids):
        if piece.startswith("<0x"):
            run.append(int(piece[3:5], 16))
            continue
        parts.append(_fallback(run))
        run.clear()
        parts.append(piece.replace("▁", " "))
    text = "".join(parts) + _fallback(run)
    return text.removeprefix(" ")


def _fallback(run: bytes) -> str:
    try:
        return run.decode("utf-8")
    except UnicodeDecodeError:
        return "\ufffd" * len(run)


def cleaned(ids: Sequence[int]) -> str:
    return byte_level(ids).replace(" .", ".").replace(" ,", ",")


DECODERS = [pytest.param((byte_level, len(BYTE_PIECES)), id="byte-level"),
            pytest.param((sentencepiece, len(SP_PIECES)), id="sentencepiece"),
            pytest.param((cleaned, len(BYTE_PIECES)), id="cleanup-spaces")]
# Valid text with characters split over tokens (é, 😀, 日本, e + combining acute) and a special token.
BYTE_TEXT = [2, 4, 5, 6, 8, 9, 10, 12, 22, 23, 24, 3, 19, 20, 17, 13, 21, 11, SPECIAL, 26, 18, 16]
SP_TEXT = [2, 3, 4, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, SPECIAL, 22, 5]


class Logits:
    """1-D logits as a plain list: the loop needs only ``argmax`` and index assignment."""

    def __init__(self, values: list[float]) -> None:
        self.values = values

    def argmax(self) -> int:
        return max(range(len(self.values)), key=self.values.__getitem__)

    def __setitem__(self, index: list[int], value: float) -> None:
        for i in index:
            self.values[i] = value


class Scripted:
    """A fake model that wants ``script[k]`` as its k-th output token (then ``fallback``, the
    runner-up, e.g. when ``script[k]`` is EOS under ignore_eos), and records how it was run."""

    def __init__(self, script: Sequence[int], n_vocab: int, fallback: int = 2) -> None:
        self.script, self.n_vocab, self.fallback = list(script), n_vocab, fallback
        self.steps: list[tuple[int, int]] = []  # (token, position) of each step
        self.prompt_len = 0
        self.syncs = 0

    def _logits(self, k: int) -> Logits:
        values = [0.0] * self.n_vocab
        values[self.fallback] = 1.0
        values[self.script[k % len(self.script)]] = 2.0
        return Logits(values)

    def prefill(self, ids: Sequence[int]) -> tuple[int, Logits]:
        self.prompt_len = len(ids)
        return len(ids), self._logits(0)

    def step(self, state: int, token: int, position: int) -> tuple[int, Logits]:
        assert position == state  # the token sits right after everything the state holds
        self.steps.append((token, position))
        return state + 1, self._logits(state + 1 - self.prompt_len)

    def sync(self) -> None:
        self.syncs += 1

    def model(self, decode: Callable[[Sequence[int]], str], context_size: int = 4096) -> GreedyModel[int]:
        return GreedyModel(prefill=self.prefill, step=self.step, decode=decode, eos_ids=frozenset({EOS}),
                           context_size=context_size, sync=self.sync)


def old_loop(model: GreedyModel[Any], req: GenerationRequest, prompt: Sequence[int]) -> tuple[str, int, str]:
    """What the transformers and ONNX loops did before: the whole output decoded after every
    token and cut before the first stop sequence in it. (text, output tokens, finish reason)."""
    state, logits = model.prefill(prompt)
    out: list[int] = []
    text = ""
    for _ in range(min(req.max_tokens, model.context_size - len(prompt))):
        if req.ignore_eos and model.eos_ids:
            logits[sorted(model.eos_ids)] = -float("inf")
        tok = int(logits.argmax())
        if tok in model.eos_ids:
            return text, len(out), "eos"
        out.append(tok)
        text = model.decode(out)
        hits = [text.find(s) for s in req.stop if s and s in text]
        if hits:
            return text[: min(hits)], len(out), "stop"
        state, logits = model.step(state, tok, len(prompt) + len(out) - 1)
    return text, len(out), "length"


def reference(script: Sequence[int], req: GenerationRequest, decode: Callable[[Sequence[int]], str],
              n_vocab: int) -> tuple[str, int, str]:
    return old_loop(Scripted(script, n_vocab).model(decode), req, (5, 6, 7))


def run(script: Sequence[int], req: GenerationRequest, decode: Callable[[Sequence[int]], str], n_vocab: int,
        prompt: Sequence[int] = (5, 6, 7)) -> tuple[Completion, Scripted]:
    fake = Scripted(script, n_vocab)
    return generate(fake.model(decode), req, prompt, t0=0.0), fake


@pytest.mark.parametrize("decoder", DECODERS)
def test_incremental_text_is_the_full_decode_after_every_token(decoder):
    decode, n_vocab = decoder
    rng = random.Random(7)
    for _ in range(300):
        ids = [rng.randrange(n_vocab) for _ in range(rng.randrange(1, 30))]
        detok = IncrementalDetokenizer(decode)
        for n, tok in enumerate(ids, 1):
            detok.add(tok)
            assert detok.text == decode(ids[:n]), ids[:n]


def test_characters_split_over_tokens_come_out_whole():
    emoji = [8, 9, 10]  # F0 9F | 98 | 80: one character over three tokens
    detok = IncrementalDetokenizer(byte_level)
    seen = []
    for tok in [2, 4, 5, 6, *emoji, 12]:  # Hello, " caf", C3 | A9, emoji, \n
        detok.add(tok)
        seen.append(detok.frozen_chars)
        assert "\ufffd" not in detok.text[: detok.frozen_chars]  # frozen text is complete
    assert detok.text == "Hello café😀\n"
    assert seen == sorted(seen)


@pytest.mark.parametrize("decoder", DECODERS)
def test_stop_sequences_cut_as_before_across_token_boundaries(decoder):
    decode, n_vocab = decoder
    rng = random.Random(11)
    for _ in range(400):
        script = [rng.randrange(2, n_vocab) for _ in range(24)]
        whole = decode(script)
        stops = []
        for _ in range(rng.randrange(1, 3)):  # pieces of the text: they often span tokens
            lo = rng.randrange(max(1, len(whole)))
            stops.append(whole[lo : lo + rng.randrange(1, 6)])
        req = GenerationRequest("p", max_tokens=24, stop=(*stops, ""))
        c, _ = run(script, req, decode, n_vocab)
        assert (c.text, c.n_output_tokens, c.finish_reason) == reference(script, req, decode, n_vocab)


def test_a_stop_spanning_tokens_cuts_at_its_start():
    script = [2, 18, 12, 14, 15]  # "Hello", " ", "\n", "Wor", "ld"
    c, fake = run(script, GenerationRequest("p", max_tokens=10, stop=("o \nW", "World")), byte_level,
                  len(BYTE_PIECES))
    assert (c.text, c.n_output_tokens, c.finish_reason) == ("Hell", 4, "stop")
    assert len(fake.steps) == 3  # no model step after the token that completed the stop


@pytest.mark.parametrize("decoder", DECODERS)
def test_eos_ends_the_text_and_ignore_eos_gives_exactly_max_tokens(decoder):
    decode, n_vocab = decoder
    script = [2, 3, EOS, 4]
    c, fake = run(script, GenerationRequest("p", max_tokens=9), decode, n_vocab)
    assert (c.n_output_tokens, c.finish_reason, c.text) == (2, "eos", decode([2, 3]))
    assert len(fake.steps) == 2  # the step after the last output token made the EOS
    c, fake = run(script, GenerationRequest("p", max_tokens=9, ignore_eos=True), decode, n_vocab)
    assert (c.n_output_tokens, c.finish_reason) == (9, "length")
    assert EOS not in [tok for tok, _ in fake.steps]
    assert c.text == decode([2, 3, 2, 4, 2, 3, 2, 4, 2])
    assert len(fake.steps) == 8  # none for a token that will not be used


def test_each_token_one_timestamp_after_a_sync_and_positions_follow_the_prompt():
    c, fake = run([2, 3, 4, 5], GenerationRequest("p", max_tokens=12, ignore_eos=True), byte_level,
                  len(BYTE_PIECES), prompt=[5] * 7)
    assert len(c.token_times_s) == c.n_output_tokens == 12 == fake.syncs
    assert list(c.token_times_s) == sorted(c.token_times_s) and c.token_times_s[0] > 0
    assert c.ttft_s == c.token_times_s[0] and c.latency_s == c.token_times_s[-1]
    assert [pos for _, pos in fake.steps] == list(range(7, 7 + 11))
    assert c.n_prompt_tokens == 7


def test_the_context_bounds_the_output_and_a_full_one_is_an_error():
    fake = Scripted([2], len(BYTE_PIECES))
    c = generate(fake.model(byte_level, context_size=10), GenerationRequest("p", max_tokens=50), [5] * 7, 0.0)
    assert (c.n_output_tokens, c.finish_reason) == (3, "length")
    with pytest.raises(SmallfitError, match="leaves no room"):
        generate(fake.model(byte_level, context_size=7), GenerationRequest("p"), [5] * 7, 0.0)


@pytest.mark.parametrize(("decode", "n_vocab", "script"), [
    pytest.param(byte_level, len(BYTE_PIECES), BYTE_TEXT, id="byte-level"),
    pytest.param(sentencepiece, len(SP_PIECES), SP_TEXT, id="sentencepiece"),
    pytest.param(cleaned, len(BYTE_PIECES), BYTE_TEXT, id="cleanup-spaces")])
def test_no_step_decodes_the_whole_output(decode, n_vocab, script):
    """At most two decodes per token, each of a few tokens, however long the output grows."""
    calls: list[int] = []

    def counted(ids: Sequence[int]) -> str:
        calls.append(len(ids))
        return decode(ids)

    n = 27 * len(script)  # long, and ending on a whole character
    fake = Scripted(script, n_vocab)
    req = GenerationRequest("p", max_tokens=n, ignore_eos=True, stop=("no such text",))
    c = generate(fake.model(counted), req, [5], 0.0)
    assert c.n_output_tokens == n
    assert c.text == decode([script[k % len(script)] for k in range(n)])
    assert len(calls) <= 2 * n  # the final text is joined from frozen pieces, not decoded
    assert max(calls) <= 8  # the longest window: characters over byte tokens, and their context


def test_byte_fallback_runs_made_invalid_read_as_a_whole_decode():
    """A run of byte tokens that turns invalid rewrites characters before the window: the text
    is then what decoding everything gives (one U+FFFD per byte), as before."""
    n_vocab = len(SP_PIECES)
    cafe, emoji = [4, 6, 7], [8, 9, 10, 11]  # " caf" C3 A9 (é), F0 9F 98 80 (😀)
    for script in ([*cafe, *emoji, 8, 9], [*cafe, *emoji, 8, 9, 2, 3], [*cafe, *emoji, *emoji, 2]):
        req = GenerationRequest("p", max_tokens=len(script))
        c, _ = run(script, req, sentencepiece, n_vocab)
        assert (c.text, c.n_output_tokens, c.finish_reason) == reference(script, req, sentencepiece, n_vocab)
    assert run([*cafe, *emoji, 8, 9, 2], GenerationRequest("p", max_tokens=10), sentencepiece,
               n_vocab)[0].text == "caf" + "\ufffd" * 8 + " Hello"


def test_first_stop_is_the_earliest_of_any_stop():
    assert first_stop("a\n\nb.", ("b", "\n\n", "")) == 1
    assert first_stop("abc", ("x", "")) is None


@needs_models
@pytest.mark.models
def test_a_real_byte_level_tokenizer():
    """SmolLM2's tokenizer (from the bundled GGUF) on random token ids and on text with
    accents, CJK and emoji: incremental text equals the full decode after every token."""
    transformers = pytest.importorskip("transformers")

    from smallfit.models import parse_model_ref, resolve_model

    path = resolve_model(parse_model_ref("smollm2-135m"))
    tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)

    def decode(ids: Sequence[int]) -> str:
        text: str = tok.decode(list(ids), skip_special_tokens=True)
        return text

    rng = random.Random(5)
    texts = ["Crème brûlée, naïve café 😀👍🏽 日本語のテキスト — done.\n\n", "Ünïcödé 🇫🇷 flags, ✓ ticks"]
    cases = [tok(t, add_special_tokens=False).input_ids for t in texts]
    cases += [[rng.randrange(len(tok)) for _ in range(40)] for _ in range(100)]
    for ids in cases:
        detok = IncrementalDetokenizer(decode)
        for n, t in enumerate(ids, 1):
            detok.add(t)
            assert detok.text == decode(ids[:n])


# Requests for the real models: accents, CJK and emoji (one output ends in mid-character), stop
# sequences inside and across tokens, an end of text, a fixed length.
MODEL_REQUESTS = [
    GenerationRequest("The capital of France is", 8, ("\n",)),
    GenerationRequest("Write a short poem about a café, crème brûlée and naïve dreams:", 24),
    GenerationRequest("My favourite emoji are", 32),
    GenerationRequest("Emoji story: 🐶🐱🐭🐹🐰", 24, ("🐵🐵", "\n")),
    GenerationRequest("日本の首都は", 16),
    GenerationRequest("Once upon a time", 40, ("a lit", "e, t")),
    GenerationRequest("Question: How many legs does a spider have?\nAnswer:", 30, (" legs",)),
    GenerationRequest("Thank you, goodbye.", 6, (), True),
]


@needs_models
@pytest.mark.models
@pytest.mark.skipif(not have_onnx_export(), reason="extras 'onnx' and 'hf' not installed")
def test_transformers_and_onnx_generate_as_their_old_loops(monkeypatch):
    """On the bundled SmolLM2, each backend's output through the shared loop is its old loop's
    (re-run on the same model), and the two backends, running the same fp32 weights, agree."""
    from smallfit.backends import greedy
    from smallfit.backends.base import BackendConfig, load_backend
    from smallfit.models import parse_model_ref, resolve_model

    shared = greedy.generate
    checked: list[Completion] = []

    def checking(model: GreedyModel[Any], req: GenerationRequest, prompt: Sequence[int], t0: float) -> Completion:
        got = shared(model, req, prompt, t0)
        assert (got.text, got.n_output_tokens, got.finish_reason) == old_loop(model, req, prompt), req
        checked.append(got)
        return got

    monkeypatch.setattr(greedy, "generate", checking)
    path = resolve_model(parse_model_ref("smollm2-135m"))
    outcomes = {}
    for name in ("transformers", "onnx"):
        backend = load_backend(name, BackendConfig(path, threads=1, context_size=512))
        try:
            outcomes[name] = [(c.text, c.n_output_tokens, c.finish_reason) for c in backend.generate(MODEL_REQUESTS)]
        finally:
            backend.close()
    assert len(checked) == 2 * len(MODEL_REQUESTS)
    assert outcomes["transformers"] == outcomes["onnx"]
    assert {finish for _, _, finish in outcomes["onnx"]} == {"stop", "length", "eos"}
    assert any(text.endswith("\ufffd") for text, _, _ in outcomes["onnx"])  # ended mid-character
