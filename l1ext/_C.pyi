# l1ext._C registers the torch.ops.l1ext operators when imported; it has no Python API.
