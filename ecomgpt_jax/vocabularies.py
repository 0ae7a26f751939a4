"""Vocabularies for the SeqIO tasks: SentencePiece (default) and Hugging Face ``tokenizer.json``.

Both are ``seqio.Vocabulary`` objects and both are lossless on the text EcomInstruct carries:
``decode(encode(text)) == text`` for whitespace runs, newlines, tabs, full-width Chinese
punctuation, digits and emoji.

* ``SentencePieceVocabulary``: seqio's own class on a model trained like the bundled
  ``ecominstruct/sample/spm.model`` (identity normalisation but for U+FFFF, which reads
  as U+FFFD, and U+2581, SentencePiece's own whitespace mark, which reads as a space; no dummy
  prefix, byte fallback; see ``ecominstruct/make_sample.py``). Ids: pad 0, eos 1, unk 2.
  seqio's decode of such a model is already lossless (python and TF paths), so no
  subclass is needed.
* ``HuggingFaceVocabulary``: a ``tokenizer.json`` (BLOOM's, Qwen's, ...) through the
  ``tokenizers`` library; the TF ops wrap the python calls in ``tf.numpy_function``. The
  tokenizer keeps its own ids: eos from the argument, else ``tokenizer_config.json`` next to
  the file, else the first of ``</s>``, ``<|endoftext|>``, ``<|im_end|>``, ``<eos>`` it has.
  ``pad_id`` is 0 unless given: 0 is what seqio pads with, whatever token 0 is.
  Lossless only where the tokenizer itself is (byte-level BPE without a normalizer, as
  BLOOM's; Qwen's NFC normalizer changes text that is not already NFC).

``make_vocabulary(kind, path, extra_ids)`` builds either; gin binds it from the entry points.
A vocabulary that cannot be built raises ``VocabularyError`` (a ``ValueError``: unknown kind,
unreadable tokenizer, no eos token) or ``FileNotFoundError``, each naming the file or value.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence

import numpy as np
import seqio
import tensorflow as tf
from etils import epath

DEFAULT_SPM_PATH = pathlib.Path(__file__).resolve().parent / "ecominstruct" / "sample" / "spm.model"
# Tried in order when neither the caller nor tokenizer_config.json names the eos token.
EOS_TOKEN_CANDIDATES = ("</s>", "<|endoftext|>", "<|im_end|>", "<eos>")
SENTENCEPIECE_KINDS = ("sentencepiece", "spm")
HUGGINGFACE_KINDS = ("huggingface", "hf", "tokenizer.json")

SentencePieceVocabulary = seqio.SentencePieceVocabulary


class VocabularyError(ValueError):
    """A vocabulary that cannot be built: unknown kind, bad tokenizer file, no eos token."""


def _tokenizer_file(path: str | pathlib.Path) -> epath.Path:
    """`path` itself, or `path/tokenizer.json` for a checkpoint directory. An epath, so
    that a gs:// MODEL_DIR or checkpoint (where a run keeps its tokenizer's copy) reads
    like a local folder (pathlib would make gs://b/run the local gs:/b/run)."""
    path = epath.Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"Hugging Face tokenizer file not found: {path}")
    return path


# Where transformers finds a tokenizer's special tokens; the first that names one wins
# (transformers 5 lets special_tokens_map.json override tokenizer_config.json).
TOKEN_CONFIG_FILES = ("special_tokens_map.json", "tokenizer_config.json")


def prompt_prefix(vocabulary: seqio.Vocabulary) -> tuple[int, ...]:
    """The ids every prompt starts with (HuggingFaceVocabulary.prompt_prefix; none for
    SentencePiece and other vocabularies)."""
    return tuple(getattr(vocabulary, "prompt_prefix", ()))


def _config_token(tokenizer_file: epath.Path, key: str) -> str | None:
    """`key` ("eos_token", "pad_token") from special_tokens_map.json beside the file, else
    from tokenizer_config.json, if either names it (as transformers reads them)."""
    for name in TOKEN_CONFIG_FILES:
        config_path = tokenizer_file.with_name(name)
        if not config_path.is_file():
            continue
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise VocabularyError(f"{config_path}: not valid JSON: {e}") from None
        if not isinstance(config, dict):
            raise VocabularyError(f"{config_path}: not a JSON object")
        value = config.get(key)
        if isinstance(value, dict):  # {"content": "</s>", "lstrip": ..., ...}
            value = value.get("content")
        if isinstance(value, str):
            return value
    return None


class HuggingFaceVocabulary(seqio.Vocabulary):
    """A Hugging Face ``tokenizer.json`` as a ``seqio.Vocabulary``.

    Args:
      path: a ``tokenizer.json`` file or a directory holding one.
      extra_ids: sentinel ids appended after the tokenizer's vocabulary (seqio convention).
      eos_token / eos_id: the end-of-sequence token (or id); found automatically when None.
      pad_id: the id that padding carries (default 0: seqio pads with 0).
    """

    def __init__(
        self,
        path: str | pathlib.Path,
        extra_ids: int = 0,
        eos_token: str | None = None,
        eos_id: int | None = None,
        pad_id: int = 0,
    ):
        self._path = _tokenizer_file(path)
        self._eos_token = eos_token
        self._eos_id_arg = eos_id
        self._pad_id = pad_id
        self._tokenizer = None
        self._eos = None
        self._prefix = None
        super().__init__(extra_ids=extra_ids)

    # Tokenizers hold native state: drop it for pickling / gin deep copies, reload lazily.
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_tokenizer"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)

    @property
    def path(self) -> epath.Path:
        return self._path

    @property
    def tokenizer(self):
        """The ``tokenizers.Tokenizer`` (loaded on first use)."""
        if self._tokenizer is None:
            import tokenizers

            try:  # from the text: from_file reads local files only
                tokenizer = tokenizers.Tokenizer.from_str(self._path.read_text(encoding="utf-8"))
            except Exception as e:  # the library raises a bare Exception on bad JSON
                raise VocabularyError(
                    f"{self._path}: cannot load Hugging Face tokenizer: {e}"
                ) from None
            # A file may carry truncation or padding settings (saved from a training
            # script): `encode` would apply them, cutting prompts and answers silently.
            # transformers turns both off per call unless asked; SeqIO trims and pads.
            tokenizer.no_truncation()
            tokenizer.no_padding()
            self._tokenizer = tokenizer
        return self._tokenizer

    def _find_eos(self) -> int:
        if self._eos_id_arg is not None:
            return int(self._eos_id_arg)
        names = [self._eos_token or _config_token(self._path, "eos_token")]
        if names[0] is None:
            names = list(EOS_TOKEN_CANDIDATES)
        for name in names:
            token_id = self.tokenizer.token_to_id(name)
            if token_id is not None:
                return token_id
        raise VocabularyError(
            f"{self._path}: no end-of-sequence token among {names}; pass eos_token or eos_id"
        )

    @property
    def eos_id(self) -> int:
        if self._eos is None:
            self._eos = self._find_eos()
        return self._eos

    @property
    def pad_id(self) -> int:
        return self._pad_id

    @property
    def unk_id(self) -> int | None:
        token = getattr(self.tokenizer.model, "unk_token", None)  # BPE/WordPiece models
        return None if token is None else self.tokenizer.token_to_id(token)

    @property
    def prompt_prefix(self) -> tuple[int, ...]:
        """The ids the tokenizer's post-processor puts before a text, which transformers'
        `tokenizer(prompt)` adds: Llama's BOS; () for BLOOM and Qwen, which add none.
        Prompts start with them, in training and evaluation; answers do not."""
        if self._prefix is None:
            self._prefix = ()
            # A probe text the tokenizer gives ids to (a vocabulary may lack one script).
            for probe in ("a", "0", "的", "é", " "):
                plain = self.tokenizer.encode(probe, add_special_tokens=False).ids
                if not plain:
                    continue
                full = self.tokenizer.encode(probe, add_special_tokens=True).ids
                # Where the text's own ids start among the post-processed ones (a suffix
                # the processor adds, e.g. an EOS, is not a prompt's: answers end with EOS).
                starts = [i for i in range(len(full)) if full[i : i + len(plain)] == plain]
                self._prefix = tuple(full[: starts[0]]) if starts else ()
                break
        return self._prefix

    @property
    def bos_id(self) -> int | None:
        prefix = self.prompt_prefix
        return prefix[0] if len(prefix) == 1 else None

    @property
    def _base_vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def _encode(self, s: str) -> Sequence[int]:
        return self.tokenizer.encode(s, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        """Text of `ids` (int iterable) up to the first eos. Unlike seqio.Vocabulary's
        decode, ids past the tokenizer are dropped, not decoded as unk: a model's embedding
        may have more rows than its tokenizer has tokens (BLOOM: 250880 against 250680),
        and `tokenizers` (what transformers decodes with) skips such ids too."""
        if isinstance(ids, tf.Tensor):
            ids = ids.numpy()
        return self._decode(np.asarray(ids).reshape(-1).tolist())

    def _decode(self, ids) -> str:
        """Text of `ids` up to (not including) the first eos; ids past the vocabulary dropped."""
        ids = [int(i) for i in ids]
        if self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        size = self._base_vocab_size
        # skip_special_tokens=False: special tokens written in the text come back verbatim.
        return self.tokenizer.decode([i for i in ids if 0 <= i < size], skip_special_tokens=False)

    def decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        """`decode` in TensorFlow: int [L] -> scalar string, int [N, L] -> string [N].
        Ids past the tokenizer are dropped as in `decode` (seqio.Vocabulary's decode_tf
        would turn them into unk first, so the two paths would read differently)."""
        return self._decode_tf(ids)

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
        """Scalar string -> int32 [L]; string [N] -> int32 ragged [N, None]."""
        s = tf.convert_to_tensor(s, dtype=tf.string)
        if s.shape.rank == 0:
            return self._encode_scalar_tf(s)
        return tf.map_fn(
            self._encode_scalar_tf,
            s,
            fn_output_signature=tf.RaggedTensorSpec(shape=[None], dtype=tf.int32),
        )

    def _encode_scalar_tf(self, s: tf.Tensor) -> tf.Tensor:
        def encode(text: np.ndarray) -> np.ndarray:  # text: 0-d object array of bytes
            value = np.asarray(text).item()
            value = value.decode("utf-8") if isinstance(value, bytes) else str(value)
            return np.asarray(self._encode(value), dtype=np.int32)

        ids = tf.numpy_function(encode, [s], tf.int32, stateful=False)
        return tf.ensure_shape(ids, [None])

    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        """int [L] -> scalar string; int [N, L] -> string [N] (each cut at its first eos)."""
        ids = tf.convert_to_tensor(ids)
        rank = ids.shape.rank

        def decode(array: np.ndarray) -> np.ndarray:
            if array.size == 0 and array.ndim:  # [..., 0]: empty texts ([N, 0] cannot reshape)
                return np.full(array.shape[:-1], b"", dtype=object)
            rows = array.reshape(-1, array.shape[-1]) if array.ndim else array.reshape(1, 1)
            texts = [self._decode(row.tolist()).encode("utf-8") for row in rows]
            out = np.asarray(texts, dtype=object)
            return out.reshape(array.shape[:-1]) if array.ndim else out.reshape(())

        text = tf.numpy_function(decode, [ids], tf.string, stateful=False)
        if rank is None:  # unknown rank: the shape is only known when run
            return text
        return tf.ensure_shape(text, ids.shape[:-1] if rank else [])

    def __eq__(self, other) -> bool:
        if not isinstance(other, HuggingFaceVocabulary):
            return False
        return (self._path, self.eos_id, self.extra_ids, self.pad_id) == (
            other._path,
            other.eos_id,
            other.extra_ids,
            other.pad_id,
        )

    def __hash__(self) -> int:
        return hash((str(self._path), self.extra_ids))

    def __str__(self) -> str:
        return (
            f"HuggingFaceVocabulary(file={self._path}, eos_id={self.eos_id}, "
            f"pad_id={self.pad_id}, extra_ids={self.extra_ids})"
        )


def make_vocabulary(
    kind: str = "sentencepiece",
    path: str | pathlib.Path | None = None,
    extra_ids: int = 0,
    eos_token: str | None = None,
) -> seqio.Vocabulary:
    """A vocabulary by kind: "sentencepiece" (default: the bundled sample model) or "huggingface".

    Args:
      kind: "sentencepiece" / "spm", or "huggingface" / "hf" / "tokenizer.json".
      path: the .model file, or the tokenizer.json (or a directory holding it). Required for
        Hugging Face; defaults to the bundled ``sample/spm.model`` for SentencePiece.
      extra_ids: seqio sentinel ids appended after the vocabulary.
      eos_token: Hugging Face only: the eos token when it cannot be found automatically.
    """
    kind_l = str(kind).lower()
    if kind_l in SENTENCEPIECE_KINDS:
        model = epath.Path(path) if path is not None else DEFAULT_SPM_PATH
        if not model.is_file():
            raise FileNotFoundError(
                f"SentencePiece model not found: {model}"
                + (
                    " (regenerate it: python -m ecomgpt_jax.ecominstruct.make_sample)"
                    if path is None
                    else ""
                )
            )
        return SentencePieceVocabulary(str(model), extra_ids=extra_ids)
    if kind_l in HUGGINGFACE_KINDS:
        if path is None:
            raise VocabularyError(
                "make_vocabulary(kind='huggingface') needs path= a tokenizer.json"
            )
        return HuggingFaceVocabulary(path, extra_ids=extra_ids, eos_token=eos_token)
    raise VocabularyError(
        f"unknown vocabulary kind {kind!r}; expected one of "
        f"{SENTENCEPIECE_KINDS + HUGGINGFACE_KINDS}"
    )
