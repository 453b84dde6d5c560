"""Features for training: kaldi-native-fbank through lhotse, and SpecAugment."""
