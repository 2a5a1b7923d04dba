"""CIFAR-100's 20 superclasses and their 100 fine classes (Krizhevsky 2009), known before any download.

Both name lists are alphabetical, exactly as in the dataset's `meta` file, so label ids follow from the table;
the loader verifies this against the files it reads.
"""

SUPERCLASSES: dict[str, list[str]] = {
    "aquatic_mammals": ["beaver", "dolphin", "otter", "seal", "whale"],
    "fish": ["aquarium_fish", "flatfish", "ray", "shark", "trout"],
    "flowers": ["orchid", "poppy", "rose", "sunflower", "tulip"],
    "food_containers": ["bottle", "bowl", "can", "cup", "plate"],
    "fruit_and_vegetables": ["apple", "mushroom", "orange", "pear", "sweet_pepper"],
    "household_electrical_devices": ["clock", "keyboard", "lamp", "telephone", "television"],
    "household_furniture": ["bed", "chair", "couch", "table", "wardrobe"],
    "insects": ["bee", "beetle", "butterfly", "caterpillar", "cockroach"],
    "large_carnivores": ["bear", "leopard", "lion", "tiger", "wolf"],
    "large_man-made_outdoor_things": ["bridge", "castle", "house", "road", "skyscraper"],
    "large_natural_outdoor_scenes": ["cloud", "forest", "mountain", "plain", "sea"],
    "large_omnivores_and_herbivores": ["camel", "cattle", "chimpanzee", "elephant", "kangaroo"],
    "medium_mammals": ["fox", "porcupine", "possum", "raccoon", "skunk"],
    "non-insect_invertebrates": ["crab", "lobster", "snail", "spider", "worm"],
    "people": ["baby", "boy", "girl", "man", "woman"],
    "reptiles": ["crocodile", "dinosaur", "lizard", "snake", "turtle"],
    "small_mammals": ["hamster", "mouse", "rabbit", "shrew", "squirrel"],
    "trees": ["maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"],
    "vehicles_1": ["bicycle", "bus", "motorcycle", "pickup_truck", "train"],
    "vehicles_2": ["lawn_mower", "rocket", "streetcar", "tank", "tractor"],
}
COARSE_NAMES: list[str] = sorted(SUPERCLASSES)
FINE_NAMES: list[str] = sorted(f for members in SUPERCLASSES.values() for f in members)
FINE_TO_COARSE: list[int] = [next(i for i, s in enumerate(COARSE_NAMES) if f in SUPERCLASSES[s]) for f in FINE_NAMES]


def halves() -> tuple[list[str], list[str]]:
    """Two 50-class halves that both span all 20 superclasses (as Yosinski's random ImageNet halves both
    contain dogs): of each superclass's 5 members (alphabetical), A takes positions 0, 2, 4 in even
    superclasses and 0, 2 in odd ones; B takes the rest."""
    a, b = [], []
    for s, name in enumerate(COARSE_NAMES):
        pick = (0, 2, 4) if s % 2 == 0 else (0, 2)
        for j, fine in enumerate(SUPERCLASSES[name]):
            (a if j in pick else b).append(fine)
    return a, b
