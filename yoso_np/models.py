"""The Yoso* classes: thin holders of (config, weight dict) over the functional core in layers/.

Names, inputs, outputs and losses follow transformers' modeling_yoso.py; weights are keyed by the names
transformers writes, so from_pretrained / save_pretrained exchange checkpoints with it unchanged.
"""
import os
import warnings

import numpy as np

from . import checkpoint
from .backend import array_module, check_device, device_of, pool_section, to_device, to_numpy
from .config import CONFIG_NAME, YosoConfig
from .layers import heads, losses
from .layers.embeddings import embeddings, embeddings_backward
from .layers.encoder import encoder, encoder_backward
from .layers.params import add_prefix, sub

WEIGHTS_NAME = "model.safetensors"


class ModelOutput(dict):
    """transformers-style output: fields by attribute or key; fields that were not computed are None."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return self.get(name)

    def to_tuple(self):
        return tuple(v for v in self.values() if v is not None)


def base_shapes(config):
    """Every weight of YosoModel, keyed as in its checkpoint."""
    h, i, heads_ = config.hidden_size, config.intermediate_size, config.num_attention_heads
    shapes = {
        "embeddings.word_embeddings.weight": (config.vocab_size, h),
        "embeddings.position_embeddings.weight": (config.max_position_embeddings + 2, h),
        "embeddings.token_type_embeddings.weight": (config.type_vocab_size, h),
        "embeddings.LayerNorm.weight": (h,), "embeddings.LayerNorm.bias": (h,),
    }
    for n in range(config.num_hidden_layers):
        layer = {"attention.self.query": (h, h), "attention.self.key": (h, h), "attention.self.value": (h, h),
                 "attention.output.dense": (h, h), "intermediate.dense": (i, h), "output.dense": (h, i)}
        for name, shape in layer.items():
            shapes[f"encoder.layer.{n}.{name}.weight"] = shape
            shapes[f"encoder.layer.{n}.{name}.bias"] = shape[:1]
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes[f"encoder.layer.{n}.{name}.weight"] = (h,)
            shapes[f"encoder.layer.{n}.{name}.bias"] = (h,)
        if config.conv_window is not None:
            shapes[f"encoder.layer.{n}.attention.self.conv.weight"] = (heads_, 1, config.conv_window, 1)
    return shapes


def linear_shapes(prefix, n_out, n_in):
    return {prefix + "weight": (n_out, n_in), prefix + "bias": (n_out,)}


def init_weight(name, shape, config, rng):
    """transformers' _init_weights: normal(0, initializer_range) for matrices and embeddings (the padding row
    of the word embeddings zeroed), ones for LayerNorm weights, zeros for biases."""
    if name.endswith("LayerNorm.weight"):
        return np.ones(shape, np.float32)
    if name.endswith("bias"):
        return np.zeros(shape, np.float32)
    w = rng.normal(0.0, config.initializer_range, size=shape).astype(np.float32)
    if name.endswith("word_embeddings.weight") and config.pad_token_id is not None \
            and 0 <= config.pad_token_id < shape[0]:
        w[config.pad_token_id] = 0.0
    return w


def as_array(value, xp, name, kind):
    """Inputs may be lists, NumPy or CuPy arrays; returns an array of the model's backend."""
    if value is None:
        return None
    a = to_device(value, "cuda" if xp is not np else "cpu") if hasattr(value, "shape") else xp.asarray(value)
    if kind == "int" and a.dtype.kind not in "iub":
        raise TypeError(f"{name} must hold integers, got dtype {a.dtype}")
    if kind == "float" and a.dtype.kind != "f":
        raise TypeError(f"{name} must hold floats, got dtype {a.dtype}")
    return a


def check_shape(a, name, shape):
    if a is not None and tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(a.shape)}")


def to_rng(rng):
    """An int seed, a numpy Generator or None (fresh entropy) -> numpy Generator."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be an int seed, a numpy.random.Generator or None, got {type(rng).__name__}")


class YosoPreTrainedModel:
    """Shared machinery; a subclass defines head_shapes (its head's weights), __call__ (its signature) and
    _head (head, loss and their backward)."""

    base_prefix = "yoso."
    # positions of the last hidden state the head reads (None: all), the only ones the last layer computes unless
    # hidden states or contexts are asked for: a first-token head at n = 128 saves 41% of the products at 2 layers,
    # 7% at 12
    head_rows = None

    def __init__(self, config, weights=None, *, seed=0):
        if not isinstance(config, YosoConfig):
            raise TypeError(f"config must be a YosoConfig, got {type(config).__name__}")
        self.config = config
        shapes = self.expected_shapes()
        if weights is None:
            rng = np.random.default_rng(seed)
            weights = {k: init_weight(k, s, config, rng) for k, s in shapes.items()}
        missing = sorted(set(shapes) - set(weights))
        unexpected = sorted(set(weights) - set(shapes))
        if missing or unexpected:
            raise ValueError(f"weights do not match {type(self).__name__}: missing {missing}, "
                             f"unexpected {unexpected}")
        for k, s in shapes.items():
            if tuple(weights[k].shape) != tuple(s):
                raise ValueError(f"weight {k} must have shape {tuple(s)}, got {tuple(weights[k].shape)}")
        self.weights = dict(weights)

    # -- structure ------------------------------------------------------------------------------------------
    @staticmethod
    def head_shapes(config):
        return {}

    def expected_shapes(self):
        shapes = {self.base_prefix + k: s for k, s in base_shapes(self.config).items()}
        shapes.update(self.head_shapes(self.config))
        return shapes

    @property
    def base_weights(self):
        return sub(self.weights, self.base_prefix) if self.base_prefix else self.weights

    @property
    def device(self):
        return device_of(next(iter(self.weights.values())))

    @property
    def dtype(self):
        return next(iter(self.weights.values())).dtype

    def num_parameters(self):
        return int(sum(w.size for w in self.weights.values()))

    def to(self, device):
        check_device(device)
        self.weights = {k: to_device(v, device) for k, v in self.weights.items()}
        return self

    # -- checkpoints ----------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path_or_repo_id, *, revision=None, cache_dir=None, local_files_only=False,
                        token=None, dtype=np.float32, device="cpu", seed=0, **config_overrides):
        """Load config.json and weights from a local folder or a hub repo; keyword arguments that are
        YosoConfig fields override the saved config (e.g. use_expectation=False, num_labels=3)."""
        hub = dict(revision=revision, cache_dir=cache_dir, local_files_only=local_files_only, token=token)
        config_path = checkpoint.resolve_file(path_or_repo_id, CONFIG_NAME, **hub)
        config = YosoConfig.from_json_file(config_path, **config_overrides)
        state = checkpoint.load_state_dict(path_or_repo_id, dtype=dtype, **hub)
        model = cls.__new__(cls)
        model.config = config
        head = cls.head_shapes(config)
        weights, missing = checkpoint.align_state_dict(
            state, model.expected_shapes(), base_prefix="yoso", optional_keys=tuple(head))
        if missing:
            warnings.warn(f"{cls.__name__}: weights not in the checkpoint {path_or_repo_id}, newly initialised "
                          f"(train them before use): {sorted(missing)}", stacklevel=2)
            rng = np.random.default_rng(seed)
            for k in sorted(missing):
                weights[k] = init_weight(k, head[k], config, rng).astype(dtype)
        model.__init__(config, weights)
        return model.to(device)

    def state_dict(self):
        """NumPy arrays keyed exactly as transformers saves this class."""
        return {k: to_numpy(v) for k, v in self.weights.items()}

    def save_pretrained(self, directory):
        """config.json + model.safetensors, both written before either replaces the old one: a full disk or a
        read-only folder raises OSError and leaves the model saved there before intact."""
        self.config.extra["architectures"] = [type(self).__name__]
        self.config.extra["dtype"] = str(np.dtype(self.dtype))
        config = self.config.to_json_string().encode("utf-8")
        weights = checkpoint.safetensors_writer(self.state_dict())
        checkpoint.write_files({os.path.join(directory, WEIGHTS_NAME): weights,
                                os.path.join(directory, CONFIG_NAME): lambda f: f.write(config)},
                               what=f"the model to {os.fspath(directory)}")

    # -- running --------------------------------------------------------------------------------------------
    def _inputs(self, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds):
        """Validate and move the inputs to the model's backend; returns them with a float 0/1 mask."""
        xp = array_module(*self.weights.values())
        input_ids = as_array(input_ids, xp, "input_ids", "int")
        inputs_embeds = as_array(inputs_embeds, xp, "inputs_embeds", "float")
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if input_ids is not None:
            if input_ids.ndim != 2:
                raise ValueError(f"input_ids must have shape (batch, sequence), got {tuple(input_ids.shape)}")
            shape = input_ids.shape
        else:
            h = self.config.hidden_size
            if inputs_embeds.ndim != 3 or inputs_embeds.shape[-1] != h:
                raise ValueError(f"inputs_embeds must have shape (batch, sequence, {h}), "
                                 f"got {tuple(inputs_embeds.shape)}")
            shape = inputs_embeds.shape[:2]
        if 0 in shape:  # the attention's head splits and LSH tables need at least one row of one token
            raise ValueError(f"{'input_ids' if input_ids is not None else 'inputs_embeds'} must hold at least one "
                             f"sequence of at least one token, got shape {tuple(shape)}")
        token_type_ids = as_array(token_type_ids, xp, "token_type_ids", "int")
        position_ids = as_array(position_ids, xp, "position_ids", "int")
        check_shape(token_type_ids, "token_type_ids", shape)
        if position_ids is not None and position_ids.ndim not in (1, 2):
            raise ValueError(f"position_ids must have shape {tuple(shape)}, (1, {shape[1]}) or ({shape[1]},), "
                             f"got {tuple(position_ids.shape)}")
        if position_ids is not None and position_ids.ndim == 1:
            position_ids = position_ids[None, :]
        if position_ids is not None and (position_ids.shape[1] != shape[1]
                                         or position_ids.shape[0] not in (1, shape[0])):
            raise ValueError(f"position_ids must have shape {tuple(shape)} or (1, {shape[1]}), "
                             f"got {tuple(position_ids.shape)}")
        if attention_mask is None:
            mask = xp.ones(shape, dtype=self.dtype)
        else:
            mask = as_array(attention_mask, xp, "attention_mask", None)
            check_shape(mask, "attention_mask", shape)
            if mask.size and not bool(((mask == 0) | (mask == 1)).all()):
                raise ValueError(
                    "attention_mask must hold 0/1 (or bool) values, 1 for tokens to attend to; got other values "
                    f"(min {float(mask.min())}, max {float(mask.max())}). yoso_np takes the 0/1 mask, not the "
                    "additive (1 - mask) * -10000 form")
            mask = mask.astype(self.dtype)
        return input_ids, mask, token_type_ids, position_ids, inputs_embeds

    def _base(self, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, *, training, rng,
              output_hidden_states, output_attentions, keep_caches=False):
        last_rows = None if output_hidden_states or output_attentions else self.head_rows
        input_ids, mask, token_type_ids, position_ids, inputs_embeds = self._inputs(
            input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds)
        cfg, w = self.config, self.base_weights
        if training or not cfg.use_expectation:
            rng = to_rng(rng)
        x, emb_cache = embeddings(sub(w, "embeddings."), input_ids, token_type_ids, position_ids, inputs_embeds,
                                  eps=cfg.layer_norm_eps, dropout_rate=cfg.hidden_dropout_prob,
                                  padding_idx=cfg.pad_token_id, training=training, rng=rng)
        y, hidden, contexts, caches = encoder(
            sub(w, "encoder."), x, mask, cfg, training=training, rng=rng, output_hidden_states=output_hidden_states,
            output_attentions=output_attentions, keep_caches=keep_caches, last_rows=last_rows)
        out = ModelOutput(last_hidden_state=y,
                          hidden_states=tuple(hidden) if hidden is not None else None,
                          attentions=tuple(contexts) if contexts is not None else None)
        return out, mask, rng, (emb_cache, caches)


    # -- one road for every class: base model, head, loss; the backward walks it back -----------------------
    INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "inputs_embeds")
    TARGET_NAMES = ("labels", "start_positions", "end_positions", "grad_last_hidden_state")

    def _flatten_choices(self, inputs):
        return inputs, None

    def _pool_section(self, args):
        """backend.pool_section for the call's batch x n tokens on the CPU (none for inputs not yet checked to be
        arrays)."""
        embeds = args["input_ids"] is None
        shape = getattr(args["inputs_embeds"] if embeds else args["input_ids"], "shape", ())
        tokens = int(np.prod(shape[:-1] if embeds else shape)) if len(shape) >= 2 else 0
        return pool_section(tokens if self.device == "cpu" else 0)

    def _run(self, args, keep_caches=False):
        with self._pool_section(args):
            return self._run_inside(args, keep_caches)

    def _run_inside(self, args, keep_caches):
        inputs, choices = self._flatten_choices({k: args[k] for k in self.INPUT_NAMES})
        targets = {k: args.get(k) for k in self.TARGET_NAMES}
        targets["choices"] = choices
        training, rng = args["training"], args["rng"]
        base, mask, rng, caches = self._base(**inputs, training=training, rng=rng,
                                             output_hidden_states=args["output_hidden_states"],
                                             output_attentions=args["output_attentions"], keep_caches=keep_caches)
        fields, loss, head_backward = self._head(base.last_hidden_state, mask, targets, training, rng)
        out = ModelOutput(**({} if loss is None else {"loss": loss}), **(fields or {"last_hidden_state":
                                                                                  base.last_hidden_state}),
                          hidden_states=base.hidden_states, attentions=base.attentions)
        return out, (head_backward, caches)

    def forward_backward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                         inputs_embeds=None, labels=None, start_positions=None, end_positions=None,
                         output_hidden_states=False, output_attentions=False, training=False, rng=None):
        """The forward of __call__ and the backward of its loss. Returns (output, grads): grads has one array
        per weight (the keys save_pretrained writes) on the model's backend; with inputs_embeds the output
        also holds grad_inputs_embeds."""
        return self._forward_backward(locals())

    def _forward_backward(self, args):
        with self._pool_section(args):
            return self._forward_backward_inside(args)

    def _forward_backward_inside(self, args):
        out, (head_backward, (emb_cache, layer_caches)) = self._run_inside(args, keep_caches=True)
        if "loss" not in out and not isinstance(self, YosoModel):
            names = "start_positions and end_positions" if "start_logits" in out else "labels"
            raise ValueError(f"{type(self).__name__}.forward_backward needs {names} to have a loss")
        dh, grads, d_words = head_backward()
        dx, encoder_grads = encoder_backward(dh, layer_caches, self.config)
        d_embeds, embedding_grads = embeddings_backward(dx, emb_cache)
        grads.update(add_prefix(encoder_grads, self.base_prefix + "encoder."))
        grads.update(add_prefix(embedding_grads, self.base_prefix + "embeddings."))
        if d_words is not None:  # the MLM decoder is tied to the word embeddings
            grads[self.base_prefix + "embeddings.word_embeddings.weight"] += d_words
        if d_embeds is not None:
            lead = args["inputs_embeds"]
            out["grad_inputs_embeds"] = d_embeds.reshape(np.shape(lead))
        assert set(grads) == set(self.weights), sorted(set(grads) ^ set(self.weights))
        return out, grads


class YosoModel(YosoPreTrainedModel):
    base_prefix = ""

    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 inputs_embeds=None, output_hidden_states=False, output_attentions=False, training=False,
                 rng=None):
        return self._run(locals())[0]

    def forward_backward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                         inputs_embeds=None, grad_last_hidden_state=None, output_hidden_states=False,
                         output_attentions=False, training=False, rng=None):
        """Forward, then the backward of sum(last_hidden_state * grad_last_hidden_state)."""
        if grad_last_hidden_state is None:
            raise ValueError("YosoModel.forward_backward needs grad_last_hidden_state (it has no loss)")
        return self._forward_backward(locals())

    def _head(self, h, mask, targets, training, rng):
        g = targets["grad_last_hidden_state"]
        if g is not None:
            g = as_array(g, array_module(h), "grad_last_hidden_state", "float")
            check_shape(g, "grad_last_hidden_state", h.shape)
        return {}, None, lambda: (g.astype(h.dtype), {}, None)


def _cross_entropy(logits, labels):
    """Cross entropy of (N, C) logits with labels (-100 ignored); returns (loss, backward() -> dlogits)."""
    loss, cache = losses.cross_entropy(logits, labels)
    return loss, lambda: losses.cross_entropy_backward(array_module(logits).ones((), logits.dtype), cache)


class YosoForMaskedLM(YosoPreTrainedModel):
    @staticmethod
    def head_shapes(config):
        h = config.hidden_size
        return {**linear_shapes("cls.predictions.transform.dense.", h, h),
                "cls.predictions.transform.LayerNorm.weight": (h,), "cls.predictions.transform.LayerNorm.bias": (h,),
                "cls.predictions.bias": (config.vocab_size,)}

    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 inputs_embeds=None, labels=None, output_hidden_states=False, output_attentions=False,
                 training=False, rng=None):
        return self._run(locals())[0]

    def _head(self, h, mask, targets, training, rng):
        word_key = "yoso.embeddings.word_embeddings.weight"
        logits, cache = heads.mlm_head(sub(self.weights, "cls.predictions."), h, self.weights[word_key], self.config)
        loss = loss_backward = None
        if targets["labels"] is not None:
            labels = as_array(targets["labels"], array_module(logits), "labels", "int")
            check_shape(labels, "labels", logits.shape[:-1])
            loss, loss_backward = _cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))

        def backward():
            dh, grads, d_words = heads.mlm_head_backward(loss_backward().reshape(logits.shape), cache)
            return dh, add_prefix(grads, "cls.predictions."), d_words  # tied decoder
        return {"logits": logits}, loss, backward


class YosoForSequenceClassification(YosoPreTrainedModel):
    head_rows = slice(0, 1)

    @staticmethod
    def head_shapes(config):
        h = config.hidden_size
        return {**linear_shapes("classifier.dense.", h, h),
                **linear_shapes("classifier.out_proj.", config.num_labels, h)}

    def problem_type(self, labels):
        """config.problem_type, or inferred from num_labels and the labels' dtype as transformers does."""
        if self.config.problem_type is not None:
            return self.config.problem_type
        if self.config.num_labels == 1:
            return "regression"
        return "single_label_classification" if labels.dtype.kind in "iu" else "multi_label_classification"

    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 inputs_embeds=None, labels=None, output_hidden_states=False, output_attentions=False,
                 training=False, rng=None):
        return self._run(locals())[0]

    def _head(self, h, mask, targets, training, rng):
        logits, cache = heads.classification_head(sub(self.weights, "classifier."), h, self.config,
                                                  training=training, rng=rng)
        loss = loss_backward = None
        if targets["labels"] is not None:
            labels = as_array(targets["labels"], array_module(logits), "labels", None)
            loss, loss_backward = sequence_classification_loss(self.problem_type(labels), logits, labels)

        def backward():
            dh, grads = heads.classification_head_backward(loss_backward(), cache)
            return dh, add_prefix(grads, "classifier."), None
        return {"logits": logits}, loss, backward


def sequence_classification_loss(problem_type, logits, labels):
    """transformers' three losses; returns (loss, backward) where backward() -> dlogits for dloss = 1."""
    xp = array_module(logits)
    one = xp.ones((), logits.dtype)
    batch, num_labels = logits.shape
    if problem_type == "regression":
        if labels.dtype.kind not in "iuf":
            raise TypeError(f"labels for regression must be numbers, got dtype {labels.dtype}")
        pred = logits.reshape(-1) if num_labels == 1 else logits  # transformers squeezes both sides
        labels = labels.reshape(-1) if num_labels == 1 else labels
        check_shape(labels, "labels", pred.shape)
        loss, cache = losses.mse(pred, labels.astype(logits.dtype))
        return loss, lambda: losses.mse_backward(one, cache).reshape(logits.shape)
    if problem_type == "single_label_classification":
        if labels.dtype.kind not in "iu":
            raise TypeError(f"labels for single_label_classification must be integers, got dtype {labels.dtype}")
        check_shape(labels.reshape(-1), "labels", (batch,))
        return _cross_entropy(logits, labels.reshape(-1))
    check_shape(labels, "labels", logits.shape)
    loss, cache = losses.bce_with_logits(logits, labels.astype(logits.dtype))
    return loss, lambda: losses.bce_with_logits_backward(one, cache)


class YosoForMultipleChoice(YosoPreTrainedModel):
    head_rows = slice(0, 1)

    @staticmethod
    def head_shapes(config):
        h = config.hidden_size
        return {**linear_shapes("pre_classifier.", h, h), **linear_shapes("classifier.", 1, h)}

    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 inputs_embeds=None, labels=None, output_hidden_states=False, output_attentions=False,
                 training=False, rng=None):
        return self._run(locals())[0]

    def _flatten_choices(self, inputs):
        """(batch, choices, ...) inputs -> (batch * choices, ...), as transformers' view(-1, ...)."""
        lead = inputs["input_ids"] if inputs["input_ids"] is not None else inputs["inputs_embeds"]
        if lead is None or np.ndim(lead) < 3:
            raise ValueError("YosoForMultipleChoice takes input_ids of shape (batch, choices, sequence) "
                             "or inputs_embeds of shape (batch, choices, sequence, hidden)")
        choices = np.shape(lead)[:2]
        for k, a in inputs.items():
            if a is not None:
                a = a if hasattr(a, "shape") else np.asarray(a)
                if a.ndim < 3:
                    raise ValueError(f"{k} must have shape (batch, choices, ...) like the inputs, got {a.shape}")
                inputs[k] = a.reshape((-1,) + tuple(a.shape[2:]))
        return inputs, choices

    def _head(self, h, mask, targets, training, rng):
        batch, choices = targets["choices"]
        flat_logits, cache = heads.multiple_choice_head(self.weights, h)
        logits = flat_logits.reshape(batch, choices)
        loss = loss_backward = None
        if targets["labels"] is not None:
            labels = as_array(targets["labels"], array_module(logits), "labels", "int")
            check_shape(labels, "labels", (batch,))
            loss, loss_backward = _cross_entropy(logits, labels)

        def backward():
            return (*heads.multiple_choice_head_backward(loss_backward().reshape(flat_logits.shape), cache), None)
        return {"logits": logits}, loss, backward


class YosoForTokenClassification(YosoPreTrainedModel):
    @staticmethod
    def head_shapes(config):
        return linear_shapes("classifier.", config.num_labels, config.hidden_size)

    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 inputs_embeds=None, labels=None, output_hidden_states=False, output_attentions=False,
                 training=False, rng=None):
        return self._run(locals())[0]

    def _head(self, h, mask, targets, training, rng):
        logits, cache = heads.token_classification_head(sub(self.weights, "classifier."), h, self.config,
                                                        training=training, rng=rng)
        loss = loss_backward = None
        if targets["labels"] is not None:
            xp = array_module(logits)
            labels = as_array(targets["labels"], xp, "labels", "int")
            check_shape(labels, "labels", logits.shape[:-1])
            # transformers scores only the tokens whose attention_mask is 1
            active = xp.where(mask.reshape(-1) == 1, labels.reshape(-1), -100)
            loss, loss_backward = _cross_entropy(logits.reshape(-1, logits.shape[-1]), active)

        def backward():
            dh, grads = heads.token_classification_head_backward(loss_backward().reshape(logits.shape), cache)
            return dh, add_prefix(grads, "classifier."), None
        return {"logits": logits}, loss, backward


def qa_positions(positions, n, name, xp):
    """transformers clamps positions into [0, n] and ignores n (outside the sequence)."""
    positions = as_array(positions, xp, name, "int")
    if positions.ndim == 2 and positions.shape[1] == 1:
        positions = positions[:, 0]
    if positions.ndim != 1:
        raise ValueError(f"{name} must have shape (batch,) or (batch, 1), got {tuple(positions.shape)}")
    return xp.clip(positions, 0, n)


class YosoForQuestionAnswering(YosoPreTrainedModel):
    @staticmethod
    def head_shapes(config):
        return linear_shapes("qa_outputs.", 2, config.hidden_size)

    def __init__(self, config, weights=None, *, seed=0):
        config.num_labels, config.id2label, config.label2id = 2, None, None
        config.__post_init__()
        super().__init__(config, weights, seed=seed)

    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 inputs_embeds=None, start_positions=None, end_positions=None, output_hidden_states=False,
                 output_attentions=False, training=False, rng=None):
        return self._run(locals())[0]

    def _head(self, h, mask, targets, training, rng):
        (start, end), cache = heads.qa_head(sub(self.weights, "qa_outputs."), h)
        loss = backward_start = backward_end = None
        if targets["start_positions"] is not None and targets["end_positions"] is not None:
            xp, (batch, n) = array_module(start), start.shape
            s = qa_positions(targets["start_positions"], n, "start_positions", xp)
            e = qa_positions(targets["end_positions"], n, "end_positions", xp)
            check_shape(s, "start_positions", (batch,))
            check_shape(e, "end_positions", (batch,))
            start_loss, start_cache = losses.cross_entropy(start, s, ignore_index=n)
            end_loss, end_cache = losses.cross_entropy(end, e, ignore_index=n)
            loss = (start_loss + end_loss) / 2
            half = xp.full((), 0.5, start.dtype)
            backward_start = lambda: losses.cross_entropy_backward(half, start_cache)
            backward_end = lambda: losses.cross_entropy_backward(half, end_cache)

        def backward():
            dh, grads = heads.qa_head_backward(backward_start(), backward_end(), cache)
            return dh, add_prefix(grads, "qa_outputs."), None
        return {"start_logits": start, "end_logits": end}, loss, backward
