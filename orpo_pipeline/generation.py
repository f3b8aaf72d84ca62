"""Generate chat replies with a causal LM and its chat template."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def generate_replies(
    model: "PreTrainedModel",
    tokenizer: "PreTrainedTokenizerBase",
    conversations: list[list[dict[str, str]]],
    *,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    seed: int = 0,
) -> list[str]:
    """One assistant reply per conversation, batched with left padding (greedy at temperature 0)."""
    import torch

    texts = [
        tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
        for c in conversations
    ]
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = padding_side
    batch = batch.to(model.device)
    sampling = (
        {"do_sample": True, "temperature": temperature}
        if temperature > 0
        else {
            "do_sample": False,
            "temperature": None,
            "top_p": None,
            "top_k": None,
        }
    )
    torch.manual_seed(seed)
    with torch.no_grad():
        output = model.generate(
            **batch, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **sampling
        )
    new_tokens = output[:, batch["input_ids"].shape[1] :]
    return [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
