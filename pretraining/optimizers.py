"""`--optim muon`: Muon for the decoder layers' weight matrices, AdamW for every other parameter, as one optimizer for
the Trainer; and the start-up line that says which optimizer holds which parameters.

    trainer = Trainer(..., optimizer_cls_and_kwargs=optimizer_cls_and_kwargs(model, training_args))

Muon (torch.optim.Muon, torch 2.9 and later) orthogonalizes each matrix's momentum with a few Newton-Schulz
iterations; it is meant for hidden 2-D matrices only, so the tied embedding/head and the RMSNorm weights stay on AdamW
(modded-nanogpt, Moonlight). The defaults (MUON_DEFAULTS) are PyTorch's, except `adjust_lr_fn="match_rms_adamw"`
(Moonlight's scaling of each update to AdamW's RMS), so that one `--learning_rate` and one schedule serve both
optimizers; the weight decay is the recipe's on both (decoupled, scaled by the learning rate, as AdamW's). Each
setting can be changed with the Trainer's own `--optim_args`, e.g. `--optim_args "momentum=0.9,ns_steps=6"`.
"""

from dataclasses import asdict, dataclass

import torch

MUON = "muon"  # the --optim name


@dataclass(frozen=True)
class MuonSettings:
    """Muon's settings (torch.optim.Muon's arguments of the same names); the learning rate and weight decay are the
    run's."""

    momentum: float = 0.95
    nesterov: bool = True
    ns_steps: int = 5  # Newton-Schulz iterations per matrix and step
    adjust_lr_fn: str = "match_rms_adamw"  # or "original": Keller Jordan's sqrt(max(1, rows/cols)), with its own lr


MUON_DEFAULTS = MuonSettings()


def muon_settings(optim_args: str | None) -> MuonSettings:
    """`--optim_args` ('momentum=0.9,nesterov=false') over MUON_DEFAULTS; a ValueError names what is wrong."""
    pairs = [pair.split("=") for pair in (optim_args or "").replace(" ", "").split(",") if pair]
    if any(len(pair) != 2 for pair in pairs):  # the Trainer's own syntax for the flag
        raise ValueError(f"optim_args must be comma-separated key=value pairs, got {optim_args!r}")
    given = dict(pairs)
    values = asdict(MUON_DEFAULTS)
    for key, text in given.items():
        if key not in values:
            raise ValueError(f"optim_args: --optim muon has no setting {key!r} (choose from {', '.join(values)})")
        default = values[key]
        try:
            if isinstance(default, bool):
                if text.lower() not in ("true", "false"):
                    raise ValueError
                values[key] = text.lower() == "true"
            else:
                values[key] = type(default)(text)
        except ValueError:
            raise ValueError(f"optim_args: {key} must be {type(default).__name__}, got {text!r}") from None
    settings = MuonSettings(**values)
    if settings.adjust_lr_fn not in ("match_rms_adamw", "original"):
        raise ValueError(f"optim_args: adjust_lr_fn must be match_rms_adamw or original, got {settings.adjust_lr_fn!r}")
    if not 0 <= settings.momentum < 1 or not 0 < settings.ns_steps < 100:
        raise ValueError(f"optim_args: momentum must be in [0, 1) and ns_steps in 1..99, got {settings.momentum} and "
                         f"{settings.ns_steps}")
    return settings


def hidden_matrices(model) -> list[tuple[str, torch.nn.Parameter]]:
    """The decoder layers' 2-D weights (q, k, v, o, gate, up, down of every layer), by name: Muon's parameters."""
    layers = model.get_decoder().layers
    prefix = next(name for name, module in model.named_modules() if module is layers)
    return [(f"{prefix}.{name}", p) for name, p in layers.named_parameters() if p.ndim == 2 and p.requires_grad]


class MuonWithAdamW(torch.optim.Optimizer):
    """Muon for `muon_params`, AdamW for every other parameter of `params`, as one optimizer.

    torch has both, as two optimizers; the Trainer, its learning-rate scheduler, gradient scaler and checkpoints, and
    accelerate's wrapper drive one. This one holds both and shows their param groups as its own (Muon's first, each
    group of `params` split in two with its settings, weight decay included), and one state (both optimizers' state,
    keyed by parameter): one schedule sets every group's learning rate, and `state_dict` is torch's usual format.
    """

    def __init__(self, params, muon_params, lr: float, betas: tuple[float, float], eps: float,
                 weight_decay: float = 0.0, muon: MuonSettings = MUON_DEFAULTS):
        muon_ids = {id(p) for p in muon_params}
        groups = list(params)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        muon_groups, adamw_groups = [], []
        for group in groups:
            settings = {key: value for key, value in group.items() if key != "params"}
            group_params = list(group["params"])
            for kind, chosen in ((muon_groups, [p for p in group_params if id(p) in muon_ids]),
                                 (adamw_groups, [p for p in group_params if id(p) not in muon_ids])):
                if chosen:
                    kind.append({**settings, "params": chosen})
        self.muon = torch.optim.Muon(muon_groups, lr=lr, weight_decay=weight_decay, **asdict(muon))
        self.adamw = torch.optim.AdamW(adamw_groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        super().__init__([*self.muon.param_groups, *self.adamw.param_groups], {})
        self.share_groups_and_state()
        # loading a state dict replaces the groups and the state with new objects: shared again after it
        self.register_load_state_dict_post_hook(MuonWithAdamW.share_groups_and_state)

    def share_groups_and_state(self) -> None:
        split = len(self.muon.param_groups)
        self.muon.param_groups, self.adamw.param_groups = self.param_groups[:split], self.param_groups[split:]
        self.muon.state = self.adamw.state = self.state

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss


def optimizer_cls_and_kwargs(model, args) -> tuple[type, dict] | None:
    """The Trainer's `optimizer_cls_and_kwargs` for `--optim muon`; None for every other --optim (the Trainer's own).
    The Trainer passes its param groups (weight decay for all but the norms and biases) to `MuonWithAdamW`."""
    if args.optim != MUON:
        return None
    return MuonWithAdamW, {"muon_params": [p for _, p in hidden_matrices(model)], "lr": args.learning_rate,
                           "betas": (args.adam_beta1, args.adam_beta2), "eps": args.adam_epsilon,
                           "muon": muon_settings(args.optim_args)}


def optimizer_summary(model, args) -> str:
    """The start-up line: which optimizer holds which parameters (counts), with its settings."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    counts = lambda params: f"{len(params)} tensors ({sum(p.numel() for p in params):,} parameters"  # noqa: E731
    adamw = (f"betas {args.adam_beta1}/{args.adam_beta2}, eps {args.adam_epsilon:g}, weight decay "
             f"{args.weight_decay:g} (none on norms)")
    if args.optim != MUON:
        name = getattr(args.optim, "value", args.optim)
        return f"optimizer: {name}{f' ({adamw})' if name.startswith('adamw') else ''} for all {counts(trainable)})"
    matrices = [p for _, p in hidden_matrices(model)]
    rest = [p for p in trainable if all(p is not matrix for matrix in matrices)]
    muon = muon_settings(args.optim_args)
    return (f"optimizer: Muon (momentum {muon.momentum}, nesterov {muon.nesterov}, {muon.ns_steps} Newton-Schulz "
            f"steps, lr adjusted by {muon.adjust_lr_fn}, weight decay {args.weight_decay:g}) for {counts(matrices)}: "
            f"the decoder layers' matrices); AdamW ({adamw}) for {counts(rest)}: embedding, norms)")
