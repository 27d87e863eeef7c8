"""Data sources (synthetic, local text, WikiText-2), tokenisers and batching."""
