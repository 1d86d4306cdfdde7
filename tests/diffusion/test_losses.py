import torch

from xwam.diffusion.losses import masked_mse, xwam_losses


def test_masked_mse_ignores_masked_elements_and_handles_empty_masks():
    pred, target = torch.zeros(2, 3), torch.tensor([[1.0, 2.0, 100.0], [1.0, 2.0, 100.0]])
    mask = torch.tensor([1.0, 1.0, 0.0])
    assert masked_mse(pred, target, mask).item() == 2.5
    assert masked_mse(pred, target, torch.zeros(3)).item() == 0.0


def test_xwam_losses_drop_what_they_must():
    B, V, C, T, h, w, K, A, S, D = 2, 2, 4, 3, 2, 2, 4, 3, 3, 2
    target_video = torch.zeros(B, V, C, T, h, w)
    pred_video = torch.zeros_like(target_video)
    pred_video[:, :, :, 0] = 1000.0  # the conditioning frame never counts
    pred_video[:, :, :, 1:] = 1.0
    target_actions, pred_actions = torch.zeros(B, K, A), torch.ones(B, K, A)
    pred_actions[0] = 50.0  # sample 0 had clean actions: dropped
    pred_actions[:, :, 2] = 70.0  # dimension 2 is padding: masked out
    target_states, pred_states = torch.zeros(B, S, D), torch.full((B, S, D), 2.0)
    pred_states[:, 0] = 90.0  # state 0 is the clean current state: never counts
    pred_states[0] = 60.0
    losses = xwam_losses(
        pred_video, target_video, pred_actions, target_actions, pred_states, target_states,
        actions_clean=torch.tensor([True, False]), action_mask=torch.tensor([1.0, 1.0, 0.0]),
        state_mask=torch.ones(D), pred_depth=torch.full_like(target_video, 3.0), target_depth=target_video,
    )
    assert losses["video"].item() == 1.0
    assert losses["action"].item() == 1.0
    assert losses["state"].item() == 4.0
    assert losses["depth"].item() == 9.0  # depth counts every frame, frame 0 included
    assert losses["total"].item() == 15.0
    weighted = xwam_losses(
        pred_video, target_video, pred_actions, target_actions, pred_states, target_states,
        actions_clean=torch.tensor([True, False]), action_mask=torch.tensor([1.0, 1.0, 0.0]),
        state_mask=torch.ones(D), pred_depth=torch.full_like(target_video, 3.0), target_depth=target_video,
        weights={"video": 0.0, "action": 10.0, "state": 0.5},
    )
    assert weighted["video"].item() == 1.0 and weighted["action"].item() == 1.0  # reported unweighted
    assert weighted["total"].item() == 0.0 * 1.0 + 10.0 * 1.0 + 0.5 * 4.0 + 1.0 * 9.0


def test_all_clean_batch_has_zero_action_loss_with_gradient_path():
    pred = torch.ones(2, 4, 3, requires_grad=True)
    losses = xwam_losses(torch.zeros(2, 1, 1, 2, 1, 1), torch.zeros(2, 1, 1, 2, 1, 1), pred, torch.zeros(2, 4, 3),
                         actions_clean=torch.tensor([True, True]))
    assert losses["action"].item() == 0.0
    losses["total"].backward()
    assert pred.grad.abs().sum() == 0
