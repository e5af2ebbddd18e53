"""Networks: plain ``nn.Module`` s and their file formats, with no Lightning import."""
