"""DSG-KD toy (tests and the DSG-KD notebook): Korean-like notes with one English medical term whose severity is the
label, and two different tokenizers trained offline on them (a lower-casing WordPiece for the teacher, a small BPE
for the student)."""

from __future__ import annotations

import random
from pathlib import Path

from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

SEVERE = ["pneumonia", "sepsis", "stroke", "COVID-19", "meningitis", "pneumothorax"]
MILD = ["rhinitis", "headache", "dermatitis", "sprain", "conjunctivitis", "gastritis"]
KOREAN = "환자는 어제부터 증상으로 응급실에 내원함 보호자와 함께 검사상 소견 확인됨 통증 호소".split()
PARTICLES = ["", "", "로", "이", "가"]


def notes(n: int, seed: int) -> Dataset:
    """`n` notes: 4-7 Korean words with one term (sometimes followed by a particle); label 1 for a severe term."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.randrange(2)
        term = rng.choice(SEVERE if label else MILD) + rng.choice(PARTICLES)
        words = rng.sample(KOREAN, rng.randint(4, 7))
        words.insert(rng.randrange(len(words) + 1), term)
        rows.append({"text": " ".join(words) + ".", "label": label})
    return Dataset.from_list(rows)


def _corpus() -> list[str]:
    return list(notes(400, seed=123)["text"])


TEACHER_TOKENIZER = Path(__file__).resolve().parent / "dsg_teacher_tokenizer.json"


def train_teacher_tokenizer() -> Tokenizer:
    """WordPiece, lower-cased, BERT pre-tokenization, `[CLS] ... [SEP]`: every term is one or few tokens. The trainer
    breaks frequency ties in a random order (its vocabulary differs from call to call), so the demo ships the one
    trained once as `dsg_teacher_tokenizer.json` (`python recipes/demo/dsg_toy.py` writes it again)."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(_corpus(), trainers.WordPieceTrainer(vocab_size=400, special_tokens=specials))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return tok


def teacher_tokenizer() -> PreTrainedTokenizerFast:
    """The teacher's WordPiece tokenizer (see [`train_teacher_tokenizer`]), the same in every call."""
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_file(str(TEACHER_TOKENIZER)), unk_token="[UNK]", pad_token="[PAD]",
        cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
    )  # fmt: skip


def student_tokenizer() -> PreTrainedTokenizerFast:
    """A small cased BPE on whitespace/punctuation pre-tokens, `<s> ... </s>`: terms split into several pieces."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.BPEDecoder()
    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    tok.train_from_iterator(_corpus(), trainers.BpeTrainer(vocab_size=110, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )


def train_teacher(model, tokenizer, steps: int = 150, seed: int = 0, lr: float = 3e-3):
    """Teach the teacher the task (the severity of each term) on its own tokenization; in place."""
    import torch

    data = notes(512, seed=1000 + seed)
    g = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        pick = torch.randint(len(data), (32,), generator=g).tolist()
        rows = data.select(pick)
        batch = tokenizer(list(rows["text"]), padding=True, return_tensors="pt")
        loss = model(**batch, labels=torch.tensor(rows["label"])).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


if __name__ == "__main__":
    train_teacher_tokenizer().save(str(TEACHER_TOKENIZER))
    print(f"wrote {TEACHER_TOKENIZER}")
