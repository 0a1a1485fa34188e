from posttrain.config import SFTConfig, load_config
from posttrain.models.architectures import architecture_config
from posttrain.models.params import count_parameters


def test_marco_mini_counts_on_the_meta_device():
    cfg = load_config(SFTConfig, "configs/marco_mini/sft.yaml")
    counts = count_parameters(architecture_config(cfg.model.architecture))
    assert round(counts["total"] / 1e9, 2) == 17.25
    assert round(counts["active"] / 1e9, 2) == 0.87
