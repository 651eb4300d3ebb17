"""Mean-pooling prediction heads for AdapterHub ``adapters`` 1.3.0, copied by ``afbench export`` into an
export whose backbone reads the masked mean of the last layer (MiniLM) instead of the first token.

Standalone (torch and adapters only; nothing in ``benchmark`` imports it). AdapterHub's own heads read the
first token, so these heads have their own ``head_type`` in head_config.json and ``load_head`` refuses them
until they are registered, never loading a head that disagrees with the exported logits. The loader
(``head_loader`` in export.json) is one line before ``load_head``:

    runpy.run_path(f"{d}/{doc['head_loader']}")["register"](model)
"""

from adapters.heads import ClassificationHead, MultipleChoiceHead


def _mean(outputs, attention_mask):
    """[B, T, H] -> [B, H]: the mean over real (unmasked) tokens, as afbench's heads pool."""
    h = outputs[0]
    if attention_mask is None:
        return h[:, 0]
    m = attention_mask.unsqueeze(-1).to(h.dtype)
    return (h * m).sum(1) / m.sum(1).clamp(min=1.0)


class MeanPoolingClassificationHead(ClassificationHead):
    def forward(self, outputs, cls_output=None, attention_mask=None, return_dict=False, **kwargs):
        pooled = _mean(outputs, attention_mask) if cls_output is None else cls_output
        return super().forward(outputs, pooled, attention_mask, return_dict, **kwargs)


class MeanPoolingMultipleChoiceHead(MultipleChoiceHead):
    def forward(self, outputs, cls_output=None, attention_mask=None, return_dict=None, **kwargs):
        pooled = _mean(outputs, attention_mask) if cls_output is None else cls_output
        return super().forward(outputs, pooled, attention_mask, return_dict, **kwargs)


HEADS = {"afbench_mean_classification": MeanPoolingClassificationHead,
         "afbench_mean_multiple_choice": MeanPoolingMultipleChoiceHead}


def register(model) -> None:
    """Make ``model.load_head`` build the heads of ``HEADS`` from their head_config.json."""
    for name, head in HEADS.items():
        model.register_custom_head(name, head)
