"""The .ggz container: pack/unpack and its entropy coders."""
