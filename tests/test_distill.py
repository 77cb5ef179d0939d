"""Distillation (issue 14): the terms by hand, against upstream, teachers, packing, DDP == one process."""
import math

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import DistillClipLoss

from dist_utils import run_distributed
from open_clip_lightclip.losses.distill import DistillationLoss, affinity_kl, distill_keys, feature_distance
from open_clip_lightclip.models.distill_heads import DistillProjector, pack_text, unpack_texts
from open_clip_lightclip.models.teachers import (
    Teacher, TeacherError, adapt_images, check_teacher_spec, decode_tokens, parse_teacher, same_tokenizer,
)


def _unit(*shape, seed=0, dtype=torch.float64):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype), dim=-1)


def test_affinity_kl_by_hand_on_two_pairs():
    # student: orthogonal embeddings, scale 1 -> logits [[1, 0], [0, 1]]; teacher: identical rows -> uniform targets
    s = torch.eye(2, dtype=torch.float64)
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    value = affinity_kl(s, s, torch.tensor(1.0, dtype=torch.float64), t, t, 1.0)
    # KL(uniform || softmax([1, 0])) = log(1/2) - mean(log softmax([1, 0])) for each row and direction
    log_p = torch.log_softmax(torch.tensor([1.0, 0.0], dtype=torch.float64), 0)
    expected = math.log(0.5) - log_p.mean()
    torch.testing.assert_close(value, expected)
    assert affinity_kl(s, s, torch.tensor(5.0), s, s, 5.0).abs() < 1e-12  # the teacher's own distribution: 0


def test_affinity_term_has_upstreams_gradient_and_differs_by_the_teachers_entropy():
    img, txt = _unit(6, 4, seed=1).requires_grad_(), _unit(6, 4, seed=2).requires_grad_()
    t_img, t_txt = _unit(6, 5, seed=3), _unit(6, 5, seed=4)
    scale, t_scale = torch.tensor(7.0, dtype=torch.float64), 9.0
    ours = affinity_kl(img, txt, scale, t_img, t_txt, t_scale)
    g_ours = torch.autograd.grad(ours, (img, txt))
    up = DistillClipLoss()(img, txt, scale, t_img, t_txt, torch.tensor(t_scale, dtype=torch.float64),
                           output_dict=True)["distill_loss"]
    g_up = torch.autograd.grad(up, (img, txt))
    for a, b in zip(g_ours, g_up):
        torch.testing.assert_close(a, b)
    logits = t_scale * t_img @ t_txt.T
    entropy = sum(-(p * p.log()).sum(1).mean() for p in (logits.softmax(1), logits.T.softmax(1))) / 2
    torch.testing.assert_close(up - ours, entropy)


def test_feature_distance_by_hand():
    a = torch.tensor([[3.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[0.0, 1.0], [0.0, 5.0]])
    assert feature_distance(a, b, "mse").tolist() == [2.0, 0.0]  # orthogonal unit vectors: |u - v|^2 = 2
    assert feature_distance(a, b, "cosine").tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="unknown feature distance 'l1'"):
        feature_distance(a, b, "l1")


class _Base(torch.nn.Module):
    def forward(self, image_features, text_features, logit_scale, output_dict=False, **unused):
        assert not unused, f"the base loss must not see the distillation keys: {sorted(unused)}"
        return {"contrastive_loss": (image_features * text_features).sum() * 0 + 1.0}


def _model_out(n=4, d=3, dims=(3, 5), seed=0, proj=True):
    out = {"image_features": _unit(n, d, seed=seed).requires_grad_(), "text_features": _unit(n, d, seed=seed + 1)
           .requires_grad_(), "logit_scale": torch.tensor(3.0, dtype=torch.float64)}
    for k, td in enumerate(dims):
        keys = distill_keys(k)
        out[keys["teacher_image"]], out[keys["teacher_text"]] = _unit(n, td, seed=10 + k), _unit(n, td, seed=20 + k)
        if proj:
            out[keys["student_image"]] = _unit(n, td, seed=30 + k).requires_grad_()
            out[keys["student_text"]] = _unit(n, td, seed=40 + k).requires_grad_()
    return out


def test_an_ensemble_is_the_mean_of_its_teachers_and_the_teachers_get_no_gradient():
    out = _model_out()
    loss = DistillationLoss(_Base(), [4.0, 6.0], affinity_weight=1.0, feature_weight=2.0)
    terms = loss(**{k: v for k, v in out.items()}, output_dict=True)
    assert set(terms) == {"contrastive_loss", "distill_affinity_loss", "distill_feature_loss"}
    single = [DistillationLoss(_Base(), [s], feature_weight=2.0)(
        image_features=out["image_features"], text_features=out["text_features"], logit_scale=out["logit_scale"],
        output_dict=True, **{v: out[distill_keys(k)[key]] for key, v in zip(
            ("teacher_image", "teacher_text", "student_image", "student_text"), distill_keys(0).values())})
        for k, s in enumerate([4.0, 6.0])]
    for name in ("distill_affinity_loss", "distill_feature_loss"):
        torch.testing.assert_close(terms[name], (single[0][name] + single[1][name]) / 2)
    sum(terms.values()).backward()
    assert out["image_features"].grad is not None and out[distill_keys(1)["student_text"]].grad is not None
    assert not out[distill_keys(0)["teacher_image"]].requires_grad


def test_projector_maps_to_each_teachers_width_and_is_identity_for_the_students():
    p = DistillProjector(3, [3, 5])
    x, y = torch.randn(2, 3), torch.randn(2, 3)
    assert p(0, x, y) == (x, y)
    assert [t.shape for t in p(1, x, y)] == [torch.Size([2, 5])] * 2
    assert sum(q.numel() for q in p.parameters()) == 2 * 3 * 5


def test_packed_texts_round_trip_exactly():
    tokens = torch.tensor([49406, 320, 1125, 49407, 0, 0])
    emb = torch.randn(2, 7)
    packed = torch.stack([pack_text(tokens, emb.numpy()), pack_text(tokens.flip(0), (2 * emb).numpy())])
    back, syn, per_teacher = unpack_texts(packed, [3, 4])
    assert syn is None
    assert back.dtype == torch.long and torch.equal(back, torch.stack([tokens, tokens.flip(0)]))
    torch.testing.assert_close(per_teacher[0][0], torch.stack([emb[0, :3], 2 * emb[0, :3]]), rtol=0, atol=0)
    torch.testing.assert_close(per_teacher[1][1], torch.stack([emb[1, 3:], 2 * emb[1, 3:]]), rtol=0, atol=0)
    with pytest.raises(ValueError, match="cached teacher embeddings have 7 dimensions, this run expects 8"):
        unpack_texts(packed, [8])


def test_adapt_images_renormalises_and_resizes():
    x01 = torch.full((1, 3, 8, 8), 0.5)
    src = (x01 - 0.25) / 0.5
    out = adapt_images(src, (0.25,) * 3, (0.5,) * 3, (4, 4), (0.5,) * 3, (0.25,) * 3)
    assert out.shape == (1, 3, 4, 4)
    torch.testing.assert_close(out, torch.zeros(1, 3, 4, 4))  # (0.5 - 0.5) / 0.25
    assert adapt_images(src, (0.25,) * 3, (0.5,) * 3, (8, 8), (0.25,) * 3, (0.5,) * 3) is src


def test_teacher_retokenises_the_students_captions_its_way():
    student, teacher = open_clip.get_tokenizer("LightCLIP-Tiny"), open_clip.get_tokenizer("LightCLIP-MNv3-S")
    assert same_tokenizer(student, open_clip.get_tokenizer("LightCLIP-Tiny")) and not same_tokenizer(student, teacher)
    captions = ["a red apple on a wooden table", "x"]
    assert torch.equal(teacher(decode_tokens(student, student(captions))), teacher(captions))


def test_teacher_is_frozen_and_stays_in_eval_mode():
    model = open_clip.create_model("LightCLIP-Tiny")
    t = Teacher(model, open_clip.get_tokenizer("LightCLIP-Tiny"), "x")
    t.train()
    assert not t.model.training and not any(p.requires_grad for p in t.parameters())
    image, text = t.encode(torch.randn(2, 3, 96, 96), open_clip.get_tokenizer("LightCLIP-Tiny")(["a", "b"]))
    assert not image.requires_grad and torch.allclose(text.norm(dim=-1), torch.ones(2))
    assert t.embed_dim == 128


def test_bad_teachers_are_one_line_errors(tmp_path):
    assert parse_teacher("ViT-B-32=openai") == ("ViT-B-32", "openai")
    assert parse_teacher("hf-hub:org/name") == ("hf-hub:org/name", None)
    with pytest.raises(TeacherError, match="write MODEL=WEIGHTS"):
        parse_teacher("ViT-B-32=")
    assert "unknown model 'LightCLIP-MNv4' (did you mean" in check_teacher_spec("LightCLIP-MNv4=x.pt")
    assert "no weights" in check_teacher_spec("LightCLIP-Tiny")
    missing = check_teacher_spec(f"LightCLIP-Tiny={tmp_path}/none.pt")
    assert "is neither a file nor a pretrained tag of LightCLIP-Tiny" in missing and "\n" not in missing


# ------------------------------------------------------------------ 2 gloo processes == 1 process

COMBOS = [(False, False), (True, False), (True, True), (False, True)]  # (gather_with_grad, local_loss)


def _distill_grads(rank, world, gather_with_grad, local_loss, data, term):
    n = data["image_features"].shape[0] // world
    part = {k: (v[rank * n:(rank + 1) * n] if v.dim() else v).detach().clone() for k, v in data.items()}
    for k in ("image_features", "text_features", *(distill_keys(0)[s] for s in ("student_image", "student_text"))):
        part[k].requires_grad_(True)
    loss = DistillationLoss(_Base(), [5.0], affinity_weight=float(term == "affinity"),
                            feature_weight=float(term == "feature"), local_loss=local_loss,
                            gather_with_grad=gather_with_grad, rank=rank, world_size=world)
    value = loss(**part, output_dict=True)[f"distill_{term}_loss"]
    value.backward()
    return value.detach(), {k: v.grad for k, v in part.items() if v.grad is not None}


def _rank_fn(rank, world, data):
    return {(g, loc, t): _distill_grads(rank, world, g, loc, data, t) for g, loc in COMBOS for t in ("affinity", "feature")}


@pytest.fixture(scope="module")
def distributed():
    data = _model_out(n=8, d=3, dims=(5,))
    return data, run_distributed(_rank_fn, 2, data)


@pytest.mark.parametrize("gather_with_grad, local_loss", COMBOS[:3])
@pytest.mark.parametrize("term", ["affinity", "feature"])
def test_two_processes_apply_the_single_process_gradient(distributed, term, gather_with_grad, local_loss):
    data, ranks = distributed
    value, single = _distill_grads(0, 1, False, False, data, term)
    students = ("image_features", "text_features") if term == "affinity" else \
        (distill_keys(0)["student_image"], distill_keys(0)["student_text"])  # the projected features
    assert set(single) == set(students)
    fraction = 0.5 if not (gather_with_grad or local_loss) else 1.0  # the contrastive term's own (ClipLoss)
    for name, grad in single.items():
        applied = torch.cat([r[(gather_with_grad, local_loss, term)][1][name] for r in ranks]) / 2
        torch.testing.assert_close(applied, fraction * grad, rtol=1e-7, atol=1e-10, msg=name)
    logged = torch.stack([r[(gather_with_grad, local_loss, term)][0] for r in ranks])
    torch.testing.assert_close(logged.mean() if (local_loss or term == "feature") else logged[0], value)


def test_teacher_outputs_follow_the_batch_not_its_memory_address():
    """--accum-freq feeds the same tensors twice (the teacher runs once); a new batch in a freed batch's memory
    is a new batch."""
    from open_clip_lightclip.models.distill_heads import _TeacherOutputs

    calls = []

    class FakeTeacher:
        def embed_student_batch(self, images, texts, *args):
            calls.append(1)
            return images[:, 0, 0, :2].clone(), images[:, 0, 0, :2].clone()

    model = type("M", (), {"visual": type("V", (), {"preprocess_cfg": {}})()})()
    outputs = _TeacherOutputs([FakeTeacher()], [2], None, None)
    memory, t = torch.zeros(2 * 3 * 4 * 4), torch.zeros(2, 5, dtype=torch.long)
    a = memory.view(2, 3, 4, 4)
    first = outputs._teacher_embeddings(model, a, t)
    assert outputs._teacher_embeddings(model, a, t) is first and len(calls) == 1  # the gradient pass of --accum-freq
    memory.fill_(1.0)
    b = memory.view(2, 3, 4, 4)  # the next batch, at the same address (as a caching allocator hands it out)
    assert b.data_ptr() == a.data_ptr()
    got = outputs._teacher_embeddings(model, b, t)
    assert len(calls) == 2 and torch.equal(got[0][0], torch.ones(2, 2))


def test_a_teacher_from_a_trainer_run_is_built_as_its_run_trained_it(tmp_path):
    """A teacher checkpoint inside a trainer run (`RUN/checkpoints/epoch_N.pt`) is built with the run's
    `--force-image-size` and image mean / std from `RUN/params.txt` (it was built at its config's 96 px and
    default normalisation while trained at 128 px); without params.txt, or for another model, the config's."""
    from open_clip_lightclip.models.teachers import build_teacher

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    model = open_clip.create_model("LightCLIP-Tiny", force_image_size=128)
    ckpt = run / "checkpoints" / "epoch_1.pt"
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, ckpt)
    (run / "params.txt").write_text("model: LightCLIP-Tiny\nforce_image_size: [128]\nimage_mean: (0.5, 0.5, 0.5)\n"
                                    "image_std: (0.25, 0.25, 0.25)\nlr: 0.001\n")
    teacher = build_teacher(f"LightCLIP-Tiny={ckpt}")
    assert teacher.image_size == (128, 128) and tuple(teacher.mean) == (0.5, 0.5, 0.5) and \
        tuple(teacher.std) == (0.25, 0.25, 0.25)
    (run / "params.txt").write_text("model: LightCLIP-MNv3\nforce_image_size: [128]\n")
    assert build_teacher(f"LightCLIP-Tiny={ckpt}").image_size == (96, 96)
    (run / "params.txt").unlink()
    assert build_teacher(f"LightCLIP-Tiny={ckpt}").image_size == (96, 96)
