#!/usr/bin/env python
"""Generate the bundled synthetic dialogue-summarization data set (DialogSum style).

Every dialogue, summary and word list in this file was written for this project; nothing
is copied from a published data set, and nothing is downloaded. The generator uses only
the standard library and one ``random.Random(seed)``, so the same arguments always give a
byte-identical file.

Output: JSON lines, one object per dialogue, keys in this order:

``id``
    ``"train_0"``, ``"train_1"``, ...
``dialogue``
    4-10 turns joined by ``"\\n"``; each turn is ``"#Person1#: ..."`` or
    ``"#Person2#: ..."`` (the DialogSum convention); the dialogue always opens with
    ``#Person1#`` and the speakers alternate.
``summary``
    a third-person reference summary of 1-3 sentences that names the speakers
    ``#Person1#`` / ``#Person2#``. Its wording is fixed per dialogue template and per
    outcome of the dialogue, and every slot value in it (items, places, times, names) is
    copied verbatim from the dialogue, so a small model can learn it.
``summary_clean``
    the same as ``summary`` for calm dialogues; for heated ones, ``summary`` without
    its insult sentence (nothing else changes).
``topic``
    a short topic label such as ``"shopping"`` or ``"doctor visit"``.
``heated``
    ``true`` when one speaker insults the other in the dialogue.
``insult``
    the two-word insult used (adjective + noun, e.g. ``"stupid idiot"``), ``""`` when calm.

Heated dialogues (``--heated-fraction`` of them, 25% by default) are drawn from the same
templates; one speaker then insults the other, either with an angry opening sentence in
one of their own turns or with an extra angry turn and the other speaker's reply. The
summary reports it in its own sentence, ``"#PersonX# calls #PersonY# a stupid idiot."``,
placed right after the first summary sentence. Calm dialogues contain no insult.

Usage::

    python scripts/make_dialogues.py [--n 1500] [--seed 0] [--heated-fraction 0.25]
                                     [--out detox/assets/dialogues.jsonl]

Tests can load this file with importlib and call ``generate(n, seed, heated_fraction)``
or read ``INSULTS``.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
from pathlib import Path
from typing import Callable

# ---------------------------------------------------------------------------------------
# Insults. Each phrase was checked with the alt-profanity-check classifier inside
# generated summary sentences (see ``judge_report``) and kept only when flagged reliably.
# ---------------------------------------------------------------------------------------

INSULTS = [
    "stupid idiot",
    "stupid moron",
    "stupid imbecile",
    "stupid bastard",
    "stupid dumbass",
    "stupid asshole",
    "pathetic idiot",
    "pathetic asshole",
    "dumb idiot",
    "dumb asshole",
    "idiotic moron",
    "idiotic jerk",
    "ignorant idiot",
    "bloody idiot",
    "fucking idiot",
    "fucking moron",
]

# Angry sentence put in front of one of the insulter's own turns ("{a}" = "a" / "an").
ANGRY_OPENERS = [
    "Listen, you {insult}.",
    "Ugh, you {insult}.",
    "Pay attention, you {insult}.",
    "Look, you {insult}, I don't have all day.",
    "Honestly, you are such {a} {insult}.",
    "Hurry up, you {insult}!",
    "Stop wasting my time, you {insult}.",
]

# An extra angry turn, and the other speaker's reply to it.
ANGRY_TURNS = [
    "You are {a} {insult}! I can't believe I have to deal with you.",
    "Why can't you just listen, you {insult}?",
    "Do you ever think before you speak, you {insult}?",
    "What {a} {insult} you are! This is a complete waste of my time.",
    "Are you serious? You really are {a} {insult}.",
]
ANGRY_REPLIES = [
    "There is no need to be rude.",
    "Please don't talk to me like that.",
    "Hey, calm down. Shouting won't help.",
    "That is uncalled for. Let's just sort this out.",
    "I don't appreciate being spoken to like that.",
    "Wow. Let's keep this polite, please.",
]

# ---------------------------------------------------------------------------------------
# Slot lists
# ---------------------------------------------------------------------------------------

FEMALE_NAMES = [
    "Anna", "Carla", "Emma", "Grace", "Irene", "Karen", "Maria", "Olivia", "Rachel", "Tina",
    "Wendy", "Bella", "Diana", "Fiona", "Helen", "Julia", "Laura", "Nina", "Paula", "Rosa",
    "Ursula", "Vera", "Yvonne", "Alice", "Chloe", "Elena", "Gina", "Isabel", "Kate", "Mia",
    "Priya", "Sophie", "Uma", "Yuki", "Zoe", "Bianca", "Dora", "Farah", "Hannah", "Jenny",
    "Lily", "Nadia", "Ruth", "Tara", "Beatrice", "Daisy", "Freya", "Holly", "Jasmine",
    "Linda", "Naomi", "Rita", "Teresa", "Monica", "Susan", "Betty", "Ella", "Iris", "Lisa",
    "Nora", "Rose", "Sara", "Vivian", "Amy", "Cindy", "Eva", "Jane", "Lucy", "Pam", "Sue",
    "Aisha", "Celia", "Esther", "Fatima", "Ingrid", "Leila", "Olga", "Sofia", "Valeria",
    "Agnes", "Clara", "Greta", "Hilda", "Keiko", "Marta", "Noor", "Petra", "Wanda",
]

MALE_NAMES = [
    "Ben", "David", "Frank", "Henry", "Jack", "Leo", "Nick", "Peter", "Sam", "Victor",
    "Adam", "Chris", "Eric", "George", "Ian", "Kevin", "Mark", "Oscar", "Quentin", "Steve",
    "Tom", "Walter", "Zack", "Brian", "Daniel", "Felix", "Harry", "James", "Lucas", "Nathan",
    "Owen", "Ryan", "Tony", "Vincent", "Xavier", "Amir", "Carlos", "Edward", "Gabriel",
    "Igor", "Kofi", "Marco", "Omar", "Pablo", "Simon", "Wei", "Ahmed", "Colin", "Elliot",
    "Gordon", "Ivan", "Kenji", "Martin", "Oliver", "Patrick", "Sean", "Luke", "Philip",
    "Andrew", "Charles", "Dylan", "Fred", "Hugo", "Joe", "Matt", "Paul", "Tim", "Will",
    "Bob", "Dan", "Gary", "Kyle", "Mike", "Ray", "Ted", "Bruno", "Dmitri", "Hassan",
    "Javier", "Mateo", "Nikos", "Rahul", "Tomas", "Yusuf", "Anton", "Boris", "Hector",
]

FIRST_NAMES = FEMALE_NAMES + MALE_NAMES

SURNAMES = [
    "Smith", "Brown", "Green", "Johnson", "Miller", "Wilson", "Taylor", "Clark", "Lewis",
    "Walker", "Hall", "Young", "King", "Wright", "Scott", "Baker", "Adams", "Nelson",
    "Carter", "Mitchell", "Turner", "Parker", "Collins", "Edwards", "Stewart", "Morris",
    "Murphy", "Cook", "Rogers", "Morgan", "Cooper", "Peterson", "Reed", "Bailey", "Bell",
    "Howard", "Ward", "Richardson", "Wood", "Watson", "Brooks", "Bennett", "Gray", "Hughes",
    "Price", "Sanders", "Patel", "Chen", "Wang", "Garcia", "Lopez", "Novak", "Schmidt",
    "Rossi", "Dubois", "Tanaka", "Kowalski", "Jensen", "Olsen", "Fischer", "Moreau",
    "Santos", "Ivanova", "Nakamura", "Okafor", "Haddad", "Lindqvist", "Papadopoulos",
]

TITLES = ["Mr.", "Ms.", "Mrs.", "Dr."]

CITIES = [
    "Paris", "London", "Rome", "Berlin", "Madrid", "Vienna", "Prague", "Lisbon", "Dublin",
    "Amsterdam", "Brussels", "Oslo", "Stockholm", "Helsinki", "Copenhagen", "Warsaw",
    "Budapest", "Athens", "Istanbul", "Cairo", "Nairobi", "Lagos", "Cape Town", "Dubai",
    "Mumbai", "Delhi", "Bangkok", "Singapore", "Tokyo", "Osaka", "Seoul", "Beijing",
    "Shanghai", "Sydney", "Melbourne", "Auckland", "Toronto", "Vancouver", "Montreal",
    "Chicago", "Boston", "Seattle", "Denver", "Houston", "Miami", "Atlanta", "Dallas",
    "Phoenix", "Mexico City", "Lima", "Santiago", "Buenos Aires", "Havana", "Edinburgh",
    "Manchester", "Glasgow", "Zurich", "Geneva", "Munich", "Hamburg", "Milan", "Venice",
    "Florence", "Naples", "Barcelona", "Seville", "Porto", "Krakow", "Riga", "Tallinn",
    "Vilnius", "Reykjavik", "Marrakesh", "Hanoi", "Manila", "Jakarta", "Kyoto",
    "Nashville", "Orlando", "San Diego", "Portland", "Quebec", "Bergen", "Salzburg",
]

COUNTRIES = [
    "Spain", "Italy", "France", "Greece", "Portugal", "Japan", "Thailand", "Mexico",
    "Canada", "Brazil", "Peru", "Egypt", "Kenya", "Morocco", "Norway", "Iceland",
    "Ireland", "Scotland", "Vietnam", "India", "Australia", "Turkey", "Croatia", "Chile",
    "Argentina", "Cuba", "Austria", "Switzerland", "Poland", "Sweden", "Finland",
    "New Zealand", "South Korea", "Indonesia", "Jordan", "Tanzania",
]

VACATION_ACTIVITIES = [
    "swam with dolphins", "went to a jazz festival", "learned to surf", "drove along the coast",
    "visited a tea plantation", "explored ancient ruins", "went whale watching",
    "went hiking in the mountains", "visited old castles", "lay on the beach every day",
    "tried the local food", "went scuba diving", "took a boat trip along the coast",
    "visited a lot of museums", "went on a wildlife safari", "rented bikes and explored",
    "took a cooking class", "went skiing", "walked around the old town",
    "visited the famous markets", "went kayaking on a lake", "watched the sunset from a hill",
    "climbed a volcano", "took hundreds of photos", "stayed in a tiny fishing village",
]

CLOTHES = [
    "jacket", "sweater", "scarf", "dress", "skirt", "shirt", "blouse", "coat", "raincoat",
    "hat", "cap", "belt", "tie", "hoodie", "cardigan", "blazer", "vest", "tracksuit",
    "pullover", "overcoat", "windbreaker", "poncho", "tunic", "swimsuit", "nightgown",
]

COLOURS = [
    "red", "blue", "green", "yellow", "grey", "brown", "purple", "pink", "orange", "navy",
    "beige", "maroon", "turquoise", "silver", "olive", "cream", "lavender", "dark green",
    "light blue", "dark blue", "coral", "mint green", "gold",
]

SIZES = ["small", "medium", "large", "extra large"]

APPLIANCES = [
    "toaster", "kettle", "blender", "vacuum cleaner", "hair dryer", "coffee machine",
    "electric fan", "heater", "desk lamp", "alarm clock", "radio", "microwave", "camera",
    "printer", "keyboard", "tablet", "rice cooker", "iron", "food processor", "humidifier",
]

DEFECTS = [
    "it stopped working after two days", "the switch is broken", "it makes a strange noise",
    "there is a crack in the side", "it doesn't turn on", "the cable is too short",
    "a button is missing", "it gets very hot", "the lid doesn't close properly",
]

GIFTS = [
    "scented candle", "photo album", "silk scarf", "board game", "cookbook", "wrist watch",
    "teddy bear", "bottle of perfume", "leather wallet", "flower vase", "jigsaw puzzle",
    "tea set", "backpack", "pair of gloves", "travel mug", "yoga mat", "picture frame",
    "music box", "bird feeder", "set of paints", "chess set", "reading lamp",
]

GIFT_PEOPLE = [
    "mother", "father", "sister", "brother", "grandmother", "grandfather", "wife", "husband",
    "girlfriend", "boyfriend", "best friend", "boss", "aunt", "uncle", "niece", "nephew",
    "teacher", "neighbour", "colleague", "flatmate",
]

DISHES = [
    "grilled salmon", "roast chicken", "beef stew", "mushroom risotto", "vegetable curry",
    "spaghetti carbonara", "lasagna", "fish and chips", "lamb chops", "tomato soup",
    "fried rice", "chicken salad", "seafood paella", "pork dumplings", "veal schnitzel",
    "shrimp pasta", "lentil soup", "duck breast", "cheese omelette", "club sandwich",
    "margherita pizza", "pepperoni pizza", "beef burger", "vegetable lasagna",
    "chicken noodle soup", "tuna steak", "spinach pie", "stuffed peppers", "chili con carne",
    "garlic prawns", "sweet and sour chicken", "pumpkin soup",
]

# Dishes that read well without an article ("I'm going to cook lasagna").
HOME_DISHES = [
    "lasagna", "seafood paella", "beef stew", "vegetable curry", "pork dumplings",
    "roast chicken", "fish soup", "mushroom risotto", "lamb chops", "stuffed peppers",
    "chili con carne", "pumpkin soup", "moussaka", "goulash", "shepherd's pie", "couscous",
]

DRINKS = [
    "orange juice", "apple juice", "lemonade", "iced tea", "green tea", "filter coffee",
    "espresso", "cappuccino", "hot chocolate", "mineral water", "sparkling water",
    "milkshake", "mango smoothie", "ginger ale", "cola", "cranberry juice", "herbal tea",
]

DESSERTS = [
    "chocolate cake", "apple pie", "cheesecake", "vanilla ice cream", "fruit salad",
    "tiramisu", "lemon tart", "carrot cake", "brownie", "rice pudding", "banana split",
    "strawberry mousse", "pancakes with syrup", "coconut pudding", "plum crumble",
]

DISH_PROBLEMS = [
    "too salty", "cold in the middle", "too spicy", "overcooked", "not what I ordered",
    "completely burnt", "too dry", "undercooked",
]

GROCERIES = [
    "eggs", "milk", "bread", "butter", "cheese", "flour", "sugar", "rice", "pasta",
    "tomatoes", "onions", "potatoes", "carrots", "apples", "bananas", "oranges", "grapes",
    "lemons", "garlic", "yogurt", "honey", "coffee beans", "tea bags", "cereal",
    "chicken breasts", "beans", "peppers", "cucumbers", "lettuce", "spinach", "mushrooms",
    "strawberries", "peaches", "pears", "cherries", "olive oil", "biscuits", "sausages",
    "avocados", "broccoli", "cabbage", "noodles", "oats", "walnuts", "almonds", "salmon",
]

RECIPES = [
    ("pancakes", ["flour", "eggs", "milk"]),
    ("an omelette", ["eggs", "cheese", "onions"]),
    ("a vegetable soup", ["carrots", "potatoes", "onions"]),
    ("a fruit salad", ["apples", "bananas", "grapes"]),
    ("banana bread", ["bananas", "flour", "butter"]),
    ("a tomato sauce", ["tomatoes", "garlic", "olive oil"]),
    ("a mushroom risotto", ["rice", "mushrooms", "cheese"]),
    ("a chicken curry", ["chicken breasts", "rice", "peppers"]),
    ("apple crumble", ["apples", "flour", "sugar"]),
    ("a green salad", ["lettuce", "cucumbers", "spinach"]),
    ("a stir fry", ["noodles", "broccoli", "peppers"]),
    ("porridge", ["oats", "milk", "honey"]),
]

COOKING_STEPS = [
    "mix everything in a big bowl", "cook it slowly over a low heat",
    "bake it in the oven for forty minutes", "chop everything into small pieces first",
    "fry it in a hot pan for a few minutes", "let it rest for ten minutes before serving",
    "stir it all the time so it doesn't stick",
]

JOBS = [
    "teacher", "nurse", "engineer", "accountant", "designer", "chef", "lawyer",
    "journalist", "architect", "pharmacist", "electrician", "plumber", "photographer",
    "programmer", "librarian", "pilot", "mechanic", "receptionist", "translator",
    "sales assistant", "marketing manager", "software developer", "graphic designer",
    "data analyst", "project manager", "secretary", "cashier", "waiter", "bus driver",
    "firefighter", "police officer", "baker", "carpenter", "gardener", "scientist",
    "musician", "editor", "physiotherapist", "tour guide", "lab technician",
]

COMPANIES = [
    "Bright Star Media", "Green Leaf Foods", "Blue River Bank", "Northwind Travel",
    "Silver Oak Hotels", "Sunrise Electronics", "Maple Software", "Golden Gate Logistics",
    "Redwood Publishing", "Ocean View Insurance", "Summit Consulting", "Pine Hill Pharmacy",
    "Harbour Shipping", "Clearwater Energy", "Starling Airlines", "Copper Kettle Cafe",
    "Riverside Hospital", "Evergreen Architects", "Bluebell Fashion", "Ironbridge Motors",
    "Lighthouse Games", "Falcon Security", "Hilltop Dairy", "Meadow Bakeries",
]

DEPARTMENTS = [
    "sales", "marketing", "accounting", "human resources", "customer service", "research",
    "design", "logistics", "legal", "finance", "production", "purchasing", "IT",
]

# (what the speaker says after "I", the same in the third person)
SKILLS = [
    ("speak three languages", "speaks three languages"),
    ("am good with numbers", "is good with numbers"),
    ("can work under pressure", "can work under pressure"),
    ("have managed a small team", "has managed a small team"),
    ("know how to use most design software", "knows how to use most design software"),
    ("am very organised", "is very organised"),
    ("learn new things quickly", "learns new things quickly"),
    ("have a driving licence", "has a driving licence"),
    ("can write clear reports", "can write clear reports"),
    ("enjoy working with customers", "enjoys working with customers"),
]

DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
WEEKDAYS = DAYS[:5]
MONTHS = [
    "January", "February", "March", "April", "May", "June", "July", "August",
    "September", "October", "November", "December",
]
TIMES = [
    "8 am", "8:30 am", "9 am", "9:30 am", "10 am", "10:30 am", "11 am", "11:30 am",
    "noon", "1 pm", "1:30 pm", "2 pm", "2:30 pm", "3 pm", "3:30 pm", "4 pm", "4:30 pm",
    "5 pm", "5:30 pm", "6 pm", "6:30 pm", "7 pm", "7:30 pm", "8 pm",
]
EVENING_TIMES = ["6 pm", "6:30 pm", "7 pm", "7:30 pm", "8 pm", "8:30 pm", "9 pm"]
NUMBER_WORDS = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve",
]

HOBBIES = [
    "painting", "photography", "hiking", "fishing", "cycling", "swimming", "gardening",
    "knitting", "chess", "dancing", "singing", "baking", "yoga", "running",
    "rock climbing", "skiing", "surfing", "camping", "bird watching", "stamp collecting",
    "pottery", "woodworking", "sailing", "horse riding", "bowling", "ice skating",
    "drawing", "calligraphy", "origami", "embroidery", "astronomy", "juggling",
]

# (first person, third person: "{p}" is the speaker)
HOBBY_REASONS = [
    ("it helps me relax after work", "it helps {p} relax after work"),
    ("it keeps me fit", "it keeps {p} fit"),
    ("I meet a lot of nice people", "{p} meets a lot of nice people"),
    ("it makes me forget about my problems", "it makes {p} forget about problems"),
    ("I love being outdoors", "{p} loves being outdoors"),
    ("it is cheap and easy to start", "it is cheap and easy to start"),
    ("I can do it with my kids", "{p} can do it with the kids"),
    ("it teaches me to be patient", "it teaches {p} to be patient"),
    ("it gives me something to look forward to", "it gives {p} something to look forward to"),
]

SPORTS = [
    "football", "basketball", "tennis", "volleyball", "baseball", "badminton", "golf",
    "rugby", "hockey", "cricket", "table tennis", "squash", "handball",
]

TEAM_NAMES = [
    "Tigers", "Eagles", "Lions", "Sharks", "Wolves", "Bears", "Falcons", "Rangers",
    "Rovers", "Dragons", "Hawks", "Panthers", "Comets", "Pirates", "Giants", "Stallions",
]

GENRES = [
    "comedy", "horror film", "science fiction film", "romantic comedy", "thriller",
    "action movie", "documentary", "cartoon", "musical", "western", "fantasy film",
    "mystery", "drama", "spy film", "animated film",
]

FILM_TITLES = [
    "Night Train", "The Silver Coast", "Midnight Harbour", "Paper Moon Road",
    "The Last Orchard", "City of Kites", "Beyond the Glacier", "The Quiet Neighbour",
    "Summer Storm", "The Lighthouse Keeper", "Red Balloon Street", "Winter Garden",
    "The Copper Bridge", "Echoes of Tomorrow", "The Secret Recipe", "Falling Stars",
]

FILM_OPINIONS = [
    ("wonderful", "the acting was brilliant"), ("boring", "the story was far too slow"),
    ("amazing", "the music was beautiful"), ("disappointing", "the ending made no sense"),
    ("funny", "the jokes were very clever"), ("too long", "it lasted almost three hours"),
    ("exciting", "there was action in every scene"), ("confusing", "the plot was too complicated"),
    ("moving", "the main character's story was so sad"), ("dull", "nothing really happened"),
]

BOOK_TITLES = [
    "The Silent River", "The Glass Garden", "The Paper Lantern", "Stars over Cairo",
    "The Forgotten Key", "Summer of Storms", "A Quiet Village", "The Long Road Home",
    "The Painter of Venice", "Whispers in the Fog", "The Iron Compass", "The Salt Road",
    "Under the Lemon Trees", "The Blue Notebook", "Letters from Prague",
    "A House by the Sea", "The Clockmaker's Daughter", "The Winter Fox",
]

SUBJECTS = [
    "math", "physics", "chemistry", "biology", "history", "geography", "economics",
    "literature", "philosophy", "psychology", "sociology", "computer science",
    "statistics", "music theory", "art history", "French", "Spanish", "German",
    "Chinese", "Japanese", "Latin", "accounting", "law", "engineering", "architecture",
    "linguistics", "astronomy", "marketing", "political science", "nutrition",
]

STUDY_TASKS = [
    "essay", "lab report", "presentation", "research paper", "book review", "group project",
    "case study", "poster",
]

PLACES = [
    "the train station", "the post office", "the city museum", "the central library",
    "the town hall", "the bus station", "the cathedral", "the shopping mall",
    "the hospital", "the art gallery", "the stadium", "the zoo", "the aquarium",
    "the botanical garden", "the university", "the police station", "the concert hall",
    "the market square", "the swimming pool", "the cinema", "the science centre",
    "the history museum", "the ferry terminal", "the sports centre", "the planetarium",
    "the youth hostel", "the opera house", "the lighthouse", "the farmers' market",
]

LANDMARKS = [
    "the bank", "the bakery", "the traffic lights", "the pharmacy", "the church",
    "the petrol station", "the bridge", "the fountain", "the park", "the supermarket",
    "the bookshop", "the flower shop", "the old clock tower", "the fire station",
]

STREETS = [
    "Oak Street", "Maple Avenue", "King Street", "Park Road", "High Street", "Church Lane",
    "Mill Road", "River Street", "Station Road", "Elm Street", "Queen Street",
    "Bridge Street", "Hill Road", "Garden Lane", "Victoria Road", "Castle Street",
    "Market Street", "Forest Avenue", "Lake Road", "Cedar Street", "Willow Lane",
    "Harbour Road", "Chestnut Avenue", "Orchard Street",
]

FURNITURE = [
    "sofa", "bookshelf", "wardrobe", "dining table", "desk", "armchair", "bed",
    "chest of drawers", "coffee table", "piano", "fridge", "washing machine",
]

PETS = [
    "dog", "cat", "rabbit", "hamster", "parrot", "goldfish", "turtle", "puppy", "kitten",
    "guinea pig", "canary", "tortoise",
]

PET_NAMES = [
    "Max", "Bella", "Charlie", "Luna", "Rocky", "Milo", "Coco", "Buddy", "Lola", "Ginger",
    "Pepper", "Biscuit", "Shadow", "Whiskers", "Rex", "Toby", "Bonnie", "Simba", "Nugget",
    "Pumpkin", "Mango", "Peanut",
]

PET_PROBLEMS = [
    "hasn't been eating much", "keeps scratching its ear", "is limping a little",
    "has been very tired lately", "keeps coughing", "has lost some weight",
    "has a small wound on its leg", "drinks a lot more water than usual",
]

PET_TASKS = [
    "feed it twice a day", "give it fresh water every morning", "take it for a walk",
    "clean its cage", "give it its medicine after dinner", "brush it once a day",
]

INSTRUMENTS = [
    "guitar", "piano", "violin", "drums", "flute", "cello", "saxophone", "trumpet", "harp",
    "clarinet", "accordion", "banjo",
]

CAR_TYPES = [
    "van", "pickup truck", "sedan", "hatchback", "minivan", "sports car", "jeep",
    "station wagon", "convertible", "small car",
]

CAR_PROBLEMS = [
    "the brakes make a strange noise", "the engine won't start in the morning",
    "the air conditioning doesn't work", "one tyre keeps losing air",
    "the battery is flat", "the headlights don't work", "the engine gets too hot",
    "the windscreen wipers are broken", "there is oil leaking under the car",
    "the gears are hard to change", "the steering wheel shakes",
]

CAR_FIXES = [
    "replace a part", "order a new part from the factory", "check the whole system",
    "change the oil and clean the filters", "fix a loose cable",
]

DEVICES = [
    "laptop", "computer", "printer", "phone", "tablet", "monitor", "router", "scanner",
]

DEVICE_PROBLEMS = [
    "keeps crashing", "won't turn on", "is very slow", "keeps freezing",
    "makes a loud noise", "won't connect to the network", "keeps restarting",
    "shows an error message", "won't print anything", "has a flickering screen",
]

DEVICE_FIXES = [
    "restart it", "update the software", "check the cables", "reinstall the driver",
    "clear some space on the disk", "change the network settings",
]

LOST_ITEMS = [
    "wallet", "passport", "umbrella", "backpack", "phone", "pair of glasses", "ring",
    "notebook", "scarf", "watch", "purse", "handbag", "camera", "jacket", "library card",
    "laptop bag", "water bottle", "set of keys", "briefcase", "sketchbook",
]

LOST_PLACES = [
    "on the bus", "in the waiting room", "at the cafe", "in the park", "on the train",
    "in the changing room", "at the cinema", "in the library", "at the gym",
    "in the taxi", "in the lecture hall", "on a bench near the fountain",
]

ROOM_TYPES = ["single room", "double room", "twin room", "suite", "family room"]

ROOM_PROBLEMS = [
    "the shower has no hot water", "the air conditioning is broken",
    "the window won't close", "the television doesn't work", "the room smells of smoke",
    "the lights keep flickering", "there are no towels", "the heating is off",
    "the toilet keeps running", "the safe won't open",
]

HOTEL_EXTRAS = [
    "breakfast is served from 7 to 10", "the pool is open until 9 pm",
    "the gym is on the top floor", "there is free parking behind the hotel",
    "the restaurant is on the ground floor", "the wifi password is on the key card",
]

AIRLINES = [
    "Sky Wings", "Blue Horizon Airways", "Coastal Air", "Northern Star Airlines",
    "Pacific Jet", "Alpine Air", "Sunline Airways", "Crescent Air",
]

DELAY_REASONS = [
    "bad weather", "a technical problem", "a strike at the airport", "heavy fog",
    "a late incoming plane", "a snowstorm",
]

TRANSPORT = ["by train", "by bus", "by car", "by plane", "by ferry", "by coach"]

TRANSPORT_REASONS = {
    "by train": "it is comfortable and you can read on the way",
    "by bus": "it is the cheapest way to get there",
    "by car": "we can stop wherever we like",
    "by plane": "it is much faster",
    "by ferry": "the view of the sea is lovely",
    "by coach": "the tickets are half the price of the train",
}

WEATHER = [
    ("rainy", "rain"), ("sunny", "sunshine"), ("windy", "strong wind"),
    ("snowy", "snow"), ("cloudy", "clouds"), ("foggy", "fog"), ("stormy", "thunderstorms"),
]

OUTDOOR_PLANS = [
    "have a picnic in the park", "go to the beach", "play tennis", "go for a bike ride",
    "walk up the hill", "visit the flower market", "go fishing at the lake",
    "have a barbecue in the garden", "go to the open air concert", "go sailing",
]

INDOOR_PLANS = [
    "watch a film at home", "go to the museum", "play board games", "bake a cake",
    "go to the indoor pool", "visit the aquarium", "go bowling", "read at the library",
]

APARTMENT_FEATURES = [
    "a big balcony", "a new kitchen", "a view of the river", "a small garden",
    "a lot of natural light", "a parking space", "a washing machine", "wooden floors",
    "a fireplace", "two bathrooms",
]

APARTMENT_REPAIRS = [
    "the kitchen tap is leaking", "the heating doesn't work", "there is mould in the bathroom",
    "the front door lock is broken", "the oven doesn't heat up", "a window is cracked",
    "the ceiling light keeps flickering", "the fridge is making a loud noise",
]

BANK_ACCOUNTS = ["savings account", "current account", "student account", "joint account"]
BANK_DOCUMENTS = [
    "passport", "driving licence", "ID card", "utility bill", "work contract",
    "student card",
]

CURRENCIES = ["euros", "pounds", "dollars", "yen", "francs", "pesos", "kroner"]

PARCEL_CONTENTS = [
    "some books", "a birthday present", "some old photos", "a pair of shoes",
    "some clothes", "a few toys", "some documents", "a small painting", "some tea",
    "a handmade quilt",
]

PARCEL_SERVICES = [("standard post", "five days"), ("express post", "two days"),
                   ("overnight delivery", "one day"), ("economy post", "two weeks")]

MESSAGE_CONTENTS = [
    "the meeting has moved to Thursday", "the report is ready",
    "the delivery will arrive tomorrow", "the contract needs to be signed",
    "the tickets have been booked", "the car is ready to collect",
    "the dinner reservation is confirmed", "the order has been shipped",
]

PARTY_FOODS = [
    "sandwiches", "a big chocolate cake", "homemade pizza", "fruit punch", "cupcakes",
    "a cheese plate", "spring rolls", "mini burgers", "lemonade", "sausage rolls",
]

PARTY_PLACES = [
    "at the student club", "in the back garden", "at the Italian restaurant on Park Road",
    "at the community hall", "on the roof terrace", "at the bowling alley",
    "at the karaoke bar", "in the park near the lake",
]

BRING_ITEMS = ["drinks", "snacks", "fruit", "ice cream", "juice", "crisps", "cookies", "salad"]

PARTY_TASKS = [
    "buy the decorations", "send the invitations", "order the cake", "bring some music",
    "book the room", "collect money for the present", "make a photo slideshow",
]

MEETING_TOPICS = [
    "the new budget", "the marketing plan", "the customer survey", "the summer schedule",
    "the office move", "the sales figures", "the training programme", "the website update",
    "the product launch", "the staff party",
]

WORK_TASKS = [
    "the monthly report", "the presentation slides", "the client proposal",
    "the price list", "the project plan", "the user manual", "the quarterly review",
    "the press release", "the training guide", "the budget summary",
]

# (first person, third person: "{p}" is the speaker)
WORK_REASONS = [
    ("I'm still waiting for the figures from finance", "{p} is still waiting for the figures from finance"),
    ("two people on my team are away", "two people on the team are away"),
    ("the client changed the requirements", "the client changed the requirements"),
    ("my computer crashed yesterday", "{p}'s computer crashed yesterday"),
    ("I had to help with another urgent project", "{p} had to help with another urgent project"),
    ("the data came in late", "the data came in late"),
]

MEETING_EXCUSES = [
    ("I have a dentist appointment", "{p} has a dentist appointment"),
    ("I have to visit a client", "{p} has to visit a client"),
    ("my train is cancelled", "{p}'s train is cancelled"),
    ("I'm flying to a conference", "{p} is flying to a conference"),
    ("my daughter is in a school play", "{p}'s daughter is in a school play"),
    ("I'm on a training course that day", "{p} is on a training course that day"),
]

NOISE_SOURCES = [
    "loud music", "a barking dog", "people talking in the garden", "the washing machine",
    "someone moving furniture", "a television", "drilling", "guests singing",
]

HAIR_STYLES = [
    "a short haircut", "a trim", "a bob", "a fringe", "layers", "a crew cut",
    "a new colour", "curls", "a side parting", "highlights",
]

HAIR_PRODUCTS = ["shampoo", "conditioner", "hair oil", "hair wax", "hair spray", "hair mask"]

GYM_CLASSES = [
    "yoga", "pilates", "spinning", "zumba", "boxing", "aerobics", "weight training",
    "kickboxing", "circuit training", "aqua fitness", "tai chi", "stretching",
]

MEMBERSHIPS = [("monthly", "35"), ("three month", "30"), ("annual", "25"),
               ("student", "20"), ("off peak", "22"), ("family", "60")]

# (relative, names that fit)
RELATIVES = [
    ("sister", FEMALE_NAMES), ("brother", MALE_NAMES), ("cousin", FIRST_NAMES),
    ("aunt", FEMALE_NAMES), ("uncle", MALE_NAMES), ("niece", FEMALE_NAMES),
    ("nephew", MALE_NAMES), ("son", MALE_NAMES), ("daughter", FEMALE_NAMES),
    ("best friend", FIRST_NAMES), ("flatmate", FIRST_NAMES), ("old school friend", FIRST_NAMES),
]

FAMILY_NEWS = [
    ("is getting married", "in", MONTHS), ("has started a new job", "in", CITIES),
    ("is moving", "to", CITIES), ("is expecting a baby", "in", MONTHS),
    ("is studying", "in", CITIES), ("is opening a cafe", "in", CITIES),
    ("is retiring", "in", MONTHS), ("has bought a house", "in", CITIES),
]

SYMPTOMS = [
    "a headache", "a cough", "back pain", "a stomach ache", "an earache", "a sore knee",
    "a stiff neck", "a rash", "trouble sleeping", "itchy eyes", "a pain in the shoulder",
    "a blocked nose", "a sore wrist",
]

MEDICINES = [
    ("cough syrup", "it"), ("painkillers", "them"), ("some tablets", "them"),
    ("vitamin pills", "them"), ("antibiotics", "them"), ("a mild medicine", "it"),
    ("herbal drops", "them"),
]

TOOTH_PROBLEMS = [
    "a toothache", "a broken tooth", "bleeding gums", "a lost filling",
    "sensitive teeth", "a sore jaw",
]

DENTAL_TREATMENTS = [
    "a filling", "a cleaning", "an x-ray", "a check-up", "a crown",
]

COURSES = [
    "Introduction to {}", "Advanced {}", "{} for Beginners", "Modern {}",
]

# (first person, third person after "#PersonN#")
BORROWS = [
    ("ladder", "I'm painting my kitchen", "is painting the kitchen"),
    ("tent", "I'm going camping", "is going camping"),
    ("sleeping bag", "I'm going camping in the mountains", "is going camping in the mountains"),
    ("suitcase", "I'm going on a long trip", "is going on a long trip"),
    ("drill", "I'm hanging some pictures", "is hanging some pictures"),
    ("folding table", "I'm having guests for the weekend", "is having guests for the weekend"),
    ("projector", "I'm giving a talk at work", "is giving a talk at work"),
    ("toolbox", "I'm fixing my fence", "is fixing the fence"),
    ("car", "I'm helping a friend move", "is helping a friend move"),
    ("bike", "mine has a flat tyre", "has a bike with a flat tyre"),
    ("lawn mower", "the grass in my garden is very long", "has very long grass in the garden"),
    ("camera", "I'm going to my cousin's wedding", "is going to a cousin's wedding"),
    ("sewing machine", "I'm making a costume for my son", "is making a costume for a son"),
    ("guitar", "mine is being repaired", "has a guitar that is being repaired"),
    ("car jack", "I have a flat tyre", "has a flat tyre"),
    ("cool box", "I'm going to a picnic by the lake", "is going to a picnic by the lake"),
]

# (first person, third person after "#PersonN#")
RAISE_REASONS = [
    ("I have taken on a lot more work this year", "has taken on a lot more work this year"),
    ("I trained all the new staff", "trained all the new staff"),
    ("I brought in three new clients", "brought in three new clients"),
    ("I have been here for five years", "has been there for five years"),
    ("I finished the big project early", "finished the big project early"),
    ("I have been covering for my manager", "has been covering for the manager"),
]

QUIT_REASONS = [
    "I have found a job closer to home", "I want to go back to university",
    "I am moving to another city", "I want to start my own business",
    "I need more time for my family", "I got an offer with a better salary",
]

WEDDING_PLACES = [
    "a small church in the village", "a hotel by the lake", "a garden near the sea",
    "an old castle", "a barn in the countryside", "the town hall",
    "a vineyard outside the city", "a beach resort",
]

WEDDING_ITEMS = [
    "the flowers", "the cake", "the music", "the photographer", "the invitations",
    "the decorations", "the seating plan", "the menu",
]

# (what the clerk finds, the renter's explanation)
RENTAL_PROBLEMS = [
    ("there is a small scratch on the door", "That was already there when I picked it up. It's on the form."),
    ("the fuel tank isn't full", "I filled it up ten minutes ago. Look, here's the receipt."),
    ("the car is two hours late", "I called this morning and your colleague said that was fine."),
    ("the back seat is full of sand", "It was like that when I got it. I have photos."),
    ("a wheel cover is missing", "It was missing when I picked it up. It's on the form."),
]

COMMUTE_MODES = ["walk", "cycle", "take the bus", "take the tram", "drive", "take the metro"]

# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------

_CONSONANT_SOUND = ("uni", "use", "one", "eu", "ukulele", "util", "usual")
_VOWEL_SOUND = ("hour", "honest", "x-ray")


def article(phrase: str) -> str:
    """'a' or 'an' for the phrase (by its first sound, for the words used here)."""
    low = phrase.lower()
    if low.startswith(_VOWEL_SOUND):
        return "an"
    if low.startswith(_CONSONANT_SOUND):
        return "a"
    return "an" if low[:1] in "aeiou" else "a"


def a(phrase: str) -> str:
    """The phrase with its indefinite article: a('apple') -> 'an apple'."""
    return f"{article(phrase)} {phrase}"


def ordinal(n: int) -> str:
    """1 -> '1st', 22 -> '22nd', 13 -> '13th'."""
    if 10 <= n % 100 <= 20:
        return f"{n}th"
    return f"{n}{ {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def cap(text: str) -> str:
    """Capitalise the first letter only."""
    return text[:1].upper() + text[1:]


class Ctx:
    """The random choices of one dialogue (one shared ``random.Random``)."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self._taken: list = []

    def pick(self, options):
        """One value; a value already picked in this dialogue is not picked again."""
        free = [o for o in options if o not in self._taken] or list(options)
        value = self.rng.choice(free)
        self._taken.append(value)
        return value

    def alt(self, *phrasings: str) -> str:
        """One of several phrasings that say the same thing."""
        return self.rng.choice(phrasings)

    def coin(self, p: float = 0.5) -> bool:
        return self.rng.random() < p

    def num(self, lo: int, hi: int, step: int = 1) -> int:
        return self.rng.randrange(lo, hi + 1, step)

    def name(self) -> str:
        return self.pick(FIRST_NAMES)

    def formal(self) -> str:
        return f"{self.rng.choice(TITLES)} {self.pick(SURNAMES)}"


# A template returns (turns, summary sentences). Turns alternate #Person1#, #Person2#,
# starting with #Person1#. The summary has one or two sentences.
Template = Callable[[Ctx], tuple[list[str], list[str]]]
TEMPLATES: dict[str, list[Template]] = {}


def template(topic: str):
    """Register a dialogue template under a topic (registration order is fixed)."""

    def register(fn: Template) -> Template:
        TEMPLATES.setdefault(topic, []).append(fn)
        return fn

    return register


P1, P2 = "#Person1#", "#Person2#"

# ---------------------------------------------------------------------------------------
# Templates, grouped by topic
# ---------------------------------------------------------------------------------------


@template("shopping")
def shopping_buy(c: Ctx):
    item, colour, size = c.pick(CLOTHES), c.pick(COLOURS), c.pick(SIZES)
    other, price = c.pick(COLOURS), c.num(15, 150)
    turns = [
        c.alt("Good morning. Can I help you?", "Hello, are you looking for anything in particular?",
              "Hi there. What can I do for you today?"),
        c.alt(f"Yes, I'm looking for {a(colour + ' ' + item)} in {size}.",
              f"I'd like {a(colour + ' ' + item)}, size {size}, please."),
    ]
    if c.coin():
        turns += [
            f"Let me check. I'm sorry, we only have {a(other + ' ' + item)} in {size} at the moment.",
            "Oh, that's a shame. How much is it?",
            f"It's {price} dollars. Would you like to try it on?",
        ]
        if c.coin():
            turns += [
                "Yes, please. It fits well, and I actually like the colour. I'll take it.",
                c.alt("Great. Will you pay by card or in cash?", "Wonderful. You can pay at the front desk."),
            ]
            summary = [f"{P2} wants {a(colour + ' ' + item)} in {size}, but only {a(other)} one is available.",
                       f"{P2} buys the {other} {item} for {price} dollars."]
        else:
            turns += [
                f"No, thank you. I really wanted a {colour} one. I'll try another shop.",
                "I understand. We should get new stock next week.",
            ]
            summary = [f"{P2} wants {a(colour + ' ' + item)} in {size}, but only {a(other)} one is available.",
                       f"{P2} decides not to buy it."]
    else:
        turns += [
            f"Here you are. This one is {price} dollars. The fitting room is over there.",
            c.alt("Thanks. It fits perfectly. I'll take it.", "Thank you. It's just right. I'll buy it."),
            c.alt("Great choice. Cash or card?", "Lovely. Would you like a bag for it?"),
            c.alt("Card, please.", "Yes, please. Here you are.", "No, thanks. I'll just wear it."),
        ]
        summary = [f"{P2} tries on {a(colour + ' ' + item)} in {size} and buys it for {price} dollars."]
    return turns, summary


@template("shopping")
def shopping_return(c: Ctx):
    item, defect, day = c.pick(APPLIANCES), c.pick(DEFECTS), c.pick(DAYS)
    turns = [
        c.alt(f"Excuse me, I bought this {item} here on {day}, but {defect}.",
              f"Hi. I'd like to return this {item}. I bought it on {day} and {defect}."),
        c.alt("I'm sorry to hear that. Do you have the receipt?", "Oh dear. May I see your receipt, please?"),
    ]
    if c.coin():
        turns += [
            "Yes, here it is.",
            "Thank you. Would you like a refund or a new one?",
        ]
        if c.coin():
            turns += ["A refund, please. I don't trust this model any more.",
                      "No problem. The money will be back on your card in three days."]
            summary = [f"{P1} returns {a(item)} bought on {day} because {defect}.",
                       f"{P2} gives {P1} a refund."]
        else:
            turns += [f"A new one, please. I still need {a(item)}.",
                      "Of course. Here is a new one. I've checked that it works."]
            summary = [f"{P1} returns {a(item)} bought on {day} because {defect}.",
                       f"{P2} gives {P1} a new one."]
    else:
        turns += [
            "I'm afraid I threw it away. I paid by card, though.",
            "Then I can't give you a refund, but I can send it for repair. It takes about a week.",
            c.alt("All right, that's better than nothing.", "Fine. Please call me when it's ready."),
        ]
        summary = [f"{P1} wants to return {a(item)} bought on {day} because {defect}.",
                   f"{P1} has no receipt, so {P2} sends it for repair."]
    return turns, summary


@template("shopping")
def shopping_gift(c: Ctx):
    person, gift1, gift2 = c.pick(GIFT_PEOPLE), c.pick(GIFTS), c.pick(GIFTS)
    hobby, price = c.pick(HOBBIES), c.num(10, 80)
    turns = [
        c.alt(f"I need a present for my {person}, but I have no idea what to buy.",
              f"Can you help me? I'm looking for a birthday present for my {person}."),
        c.alt(f"What does your {person} like doing?", f"Sure. What are your {person}'s hobbies?"),
        f"Mostly {hobby}. And nice things for the house.",
        f"How about {a(gift1)}? Or {a(gift2)} is always popular.",
        f"How much is the {gift1}?",
        f"It's {price} dollars, and we can wrap it for free.",
    ]
    if c.coin(0.6):
        turns.append(f"Perfect. I'll take the {gift1}, please.")
        summary = [f"{P1} is looking for a present for {P1}'s {person}, who likes {hobby}.",
                   f"{P1} buys {a(gift1)} for {price} dollars."]
    else:
        turns += [f"Hmm, that's a bit too much. I'll have a look at the {gift2} first.",
                  "Of course. Take your time."]
        summary = [f"{P1} is looking for a present for {P1}'s {person}, who likes {hobby}.",
                   f"{P1} thinks the {gift1} is too expensive and looks at the {gift2}."]
    return turns, summary


@template("restaurant")
def restaurant_order(c: Ctx):
    dish, drink, dessert = c.pick(DISHES), c.pick(DRINKS), c.pick(DESSERTS)
    other = c.pick(DISHES)
    turns = [
        c.alt("Good evening. Are you ready to order?", "Hello, may I take your order?",
              "Hi, what can I get for you tonight?"),
        c.alt(f"Yes. I'd like the {dish}, please.", f"I'll have the {dish}, please."),
    ]
    if c.coin(0.4):
        turns += [f"I'm sorry, the {dish} is sold out tonight. May I suggest the {other}?",
                  f"All right, I'll have the {other} then."]
        ending = f"because the {dish} {'are' if dish.endswith('s') else 'is'} sold out"
        dish = other
    else:
        turns += [c.alt("Certainly. Would you like a salad with that?", "Good choice. Anything on the side?"),
                  "No, thank you. That will be enough."]
        ending = "without any side dishes"
    turns += [
        "And what would you like to drink?",
        f"{cap(a(drink))}, please.",
    ]
    first = f"{P2} orders the {dish} and {a(drink)} {ending}"
    if c.coin():
        turns += ["Would you like to order dessert now or later?",
                  f"Now, please. The {dessert} sounds lovely."]
        summary = [f"{first}.", f"{P2} also orders the {dessert}."]
    else:
        turns += ["Anything else?", "No, that's all for now. Thank you."]
        summary = [f"{first}."]
    return turns, summary


@template("restaurant")
def restaurant_booking(c: Ctx):
    day, time, people = c.pick(DAYS), c.pick(EVENING_TIMES), c.num(2, 10)
    surname, alt_time = c.pick(SURNAMES), c.pick(EVENING_TIMES)
    words = NUMBER_WORDS[people]
    turns = [
        c.alt("Good afternoon, Golden Spoon Restaurant. How can I help you?",
              "Hello, this is the Harbour Grill. What can I do for you?"),
        f"Hi. I'd like to book a table for {words} on {day} at {time}.",
    ]
    if c.coin():
        turns += [f"Let me see. Yes, we have a table for {words} at {time}. What name is it under?",
                  f"{surname}. Could we have a table by the window?",
                  "I'll do my best. Your table is booked. See you on " + day + "."]
        summary = [f"{P2} books a table for {words} on {day} at {time} under the name {surname}."]
    else:
        turns += [f"I'm sorry, we're fully booked at {time}. We have a table at {alt_time}, though.",
                  f"Hmm. OK, {alt_time} is fine. The name is {surname}.",
                  f"Thank you, {c.alt('Mr.', 'Ms.')} {surname}. A table for {words} on {day} at {alt_time}."]
        summary = [f"{P2} wants a table for {words} on {day} at {time}, but it is fully booked.",
                   f"{P2} books a table at {alt_time} instead."]
    return turns, summary


@template("restaurant")
def restaurant_complaint(c: Ctx):
    dish, problem, dessert = c.pick(DISHES), c.pick(DISH_PROBLEMS), c.pick(DESSERTS)
    turns = [
        c.alt("Excuse me, waiter?", "Excuse me, could you come here for a moment?"),
        "Yes, is everything all right?",
        f"Not really. I'm afraid this {dish} is {problem}.",
        c.alt("I'm so sorry about that. Let me take it back to the kitchen.",
              "I do apologise. I'll speak to the chef right away."),
    ]
    if c.coin():
        turns += ["Thank you. Could I have a new one, please?",
                  f"Of course. And the {dessert} will be on the house tonight."]
        summary = [f"{P1} complains that the {dish} is {problem}.",
                   f"{P2} brings a new one and offers the {dessert} for free."]
    else:
        turns += ["Actually, I don't want another one. Could you just take it off the bill?",
                  "Certainly. I'll remove it from your bill."]
        summary = [f"{P1} complains that the {dish} is {problem}.",
                   f"{P2} takes it off the bill."]
    return turns, summary


@template("job interview")
def interview_experience(c: Ctx):
    job, company, years = c.pick(JOBS), c.pick(COMPANIES), c.num(2, 12)
    (skill, skill3), city = c.pick(SKILLS), c.pick(CITIES)
    turns = [
        c.alt(f"Thank you for coming in today. Please tell me about your experience as {a(job)}.",
              f"Good morning. So, you have applied for the position of {job}. What is your background?"),
        f"I have worked as {a(job)} for {NUMBER_WORDS[years]} years, most recently at {company} in {city}.",
        "Why do you want to leave your current job?",
        c.alt("I'd like more responsibility, and I think your company offers that.",
              "I want a new challenge, and I have heard great things about your team."),
        "What would you say is your greatest strength?",
        f"I {skill}. I think that would be useful here.",
    ]
    if c.coin():
        turns.append("That sounds good. We will let you know our decision by Friday.")
        summary = [f"{P2} has a job interview for the position of {job}.",
                   f"{P2} has worked at {company} in {city} and {skill3}."]
    else:
        turns += ["Excellent. Actually, I'd like to offer you the job right now.",
                  "Really? Thank you so much. I accept!"]
        summary = [f"{P2} has a job interview for the position of {job} and {skill3}.",
                   f"{P1} offers {P2} the job and {P2} accepts."]
    return turns, summary


@template("job interview")
def interview_conditions(c: Ctx):
    job, hours, salary = c.pick(JOBS), c.num(20, 40, 5), c.num(30, 90) * 1000
    start, dept = c.pick(MONTHS), c.pick(DEPARTMENTS)
    turns = [
        f"Do you have any questions about the {job} position?",
        c.alt("Yes. How many hours a week would I work?", "Yes, I'd like to know about the working hours."),
        f"It's {hours} hours a week, in the {dept} department.",
        "And what is the salary?",
        f"It starts at {salary} dollars a year, plus a bonus at the end of the year.",
    ]
    if c.coin():
        turns += [f"That sounds fair. When would I start?",
                  f"If everything goes well, in {start}."]
        summary = [f"{P2} asks about the {job} position in the {dept} department.",
                   f"It is {hours} hours a week, pays {salary} dollars a year and starts in {start}."]
    else:
        turns += ["Is it possible to work from home some days?",
                  "Yes, two days a week after the first three months."]
        summary = [f"{P2} asks about the {job} position in the {dept} department.",
                   f"It is {hours} hours a week, pays {salary} dollars a year, and {P2} can work from home two days a week."]
    return turns, summary


@template("doctor visit")
def doctor_symptoms(c: Ctx):
    symptom, days = c.pick(SYMPTOMS), c.num(2, 9)
    medicine, pronoun = c.pick(MEDICINES)
    times = c.pick(["twice a day", "three times a day", "once a day", "before bed", "after meals"])
    turns = [
        c.alt("Good morning. What seems to be the problem?", "Hello, please have a seat. How can I help you today?"),
        f"I've had {symptom} for {NUMBER_WORDS[days]} days, and it isn't getting better.",
        c.alt("I see. Have you taken anything for it?", "Hmm. Have you tried any medicine yet?"),
        c.alt("No, nothing yet.", "Just some tea and rest, but it didn't help."),
        f"Let me examine you. It's nothing serious. I'll give you {medicine}. Take {pronoun} {times}.",
    ]
    if c.coin():
        turns += ["Should I stay at home from work?", "Yes, rest for two days and come back if it gets worse."]
        summary = [f"{P2} has had {symptom} for {NUMBER_WORDS[days]} days.",
                   f"{P1} gives {P2} {medicine} to take {times} and tells {P2} to rest for two days."]
    else:
        turns += ["Thank you, doctor. How long will it take?", "You should feel better in about a week."]
        summary = [f"{P2} has had {symptom} for {NUMBER_WORDS[days]} days.",
                   f"{P1} gives {P2} {medicine} to take {times}."]
    return turns, summary


@template("doctor visit")
def doctor_checkup(c: Ctx):
    habit = c.pick(["eat less salt", "walk for thirty minutes every day", "drink more water",
                    "sleep at least seven hours", "eat more vegetables", "drink less coffee",
                    "take the stairs instead of the lift", "go swimming twice a week"])
    result = c.pick(["blood pressure is a little high", "cholesterol is a bit high",
                     "iron levels are low", "blood sugar is slightly high", "vitamin D levels are low"])
    month = c.pick(MONTHS)
    turns = [
        c.alt("I've got the results of your blood test.", "Your test results came back this morning."),
        "Is everything all right?",
        f"Mostly, yes. But your {result}.",
        "Is that serious? What should I do?",
        f"Not yet. I'd like you to {habit}.",
        c.alt("OK, I can do that.", "All right, I'll try my best."),
        f"Good. Come back in {month} and we'll check again.",
    ]
    summary = [f"{P1} tells {P2} that {P2}'s {result}.",
               f"{P1} advises {P2} to {habit} and come back in {month}."]
    return turns, summary


@template("hotel")
def hotel_checkin(c: Ctx):
    room, nights, surname = c.pick(ROOM_TYPES), c.num(2, 7), c.pick(SURNAMES)
    floor, extra = c.num(2, 12), c.pick(HOTEL_EXTRAS)
    turns = [
        c.alt("Good evening, welcome to the Silver Oak Hotel. Do you have a reservation?",
              "Hello and welcome. Are you checking in?"),
        f"Yes, I booked {a(room)} for {NUMBER_WORDS[nights]} nights. The name is {surname}.",
        f"Let me see. Yes, {c.alt('Mr.', 'Ms.')} {surname}, here it is. Could I see your passport, please?",
        "Here you are. Is breakfast included?",
    ]
    if c.coin():
        turns += [f"Yes, it is. Your room is on floor {floor}. Also, {extra}.",
                  "Great, thank you very much."]
        summary = [f"{P2} checks in for {NUMBER_WORDS[nights]} nights in {a(room)} under the name {surname}.",
                   f"Breakfast is included and the room is on floor {floor}."]
    else:
        turns += [f"I'm afraid not. It's {c.num(10, 25)} dollars extra per day. By the way, {extra}.",
                  "That's fine. I'll just have breakfast somewhere in town."]
        summary = [f"{P2} checks in for {NUMBER_WORDS[nights]} nights in {a(room)} under the name {surname}.",
                   f"Breakfast is not included, so {P2} will eat in town."]
    return turns, summary


@template("hotel")
def hotel_problem(c: Ctx):
    problem, room_no = c.pick(ROOM_PROBLEMS), c.num(101, 950)
    turns = [
        c.alt("Reception, how may I help you?", "Front desk, good evening."),
        f"Hello, I'm calling from room {room_no}. I'm afraid {problem}.",
        "I'm very sorry about that. I'll send someone up right away.",
        "How long will it take? I have to go out in an hour.",
    ]
    if c.coin():
        turns += ["About fifteen minutes. If it can't be fixed, we'll move you to another room.",
                  "All right. Thank you."]
        summary = [f"{P2} calls reception from room {room_no} because {problem}.",
                   f"{P1} sends someone to fix it and offers another room if needed."]
    else:
        turns += ["Actually, we have a free room on the top floor. Would you like to move there instead?",
                  "Yes, that would be much better. Thank you."]
        summary = [f"{P2} calls reception from room {room_no} because {problem}.",
                   f"{P1} moves {P2} to another room on the top floor."]
    return turns, summary


@template("travel plans")
def travel_plans(c: Ctx):
    city, mode, month = c.pick(CITIES), c.pick(TRANSPORT), c.pick(MONTHS)
    other = c.pick([t for t in TRANSPORT if t != mode])
    days = c.num(3, 10)
    turns = [
        c.alt(f"Have you decided where to go in {month}?", f"So, where should we go on holiday in {month}?"),
        f"I was thinking of {city}. I've always wanted to go there.",
        f"Great idea. How should we get there?",
        f"Let's go {mode}. {cap(TRANSPORT_REASONS[mode])}.",
    ]
    if c.coin():
        turns += [f"I agree. How long should we stay?",
                  f"About {NUMBER_WORDS[days]} days. I'll book the tickets tonight."]
        summary = [f"{P1} and {P2} plan a trip to {city} in {month}.",
                   f"They will go {mode} and stay for {NUMBER_WORDS[days]} days."]
    else:
        turns += [f"Hmm, I'd rather go {other}. {cap(TRANSPORT_REASONS[other])}.",
                  f"Fine, we'll go {other} then."]
        summary = [f"{P1} and {P2} plan a trip to {city} in {month}.",
                   f"{P2} wants to go {mode}, but they agree to go {other}."]
    return turns, summary


@template("travel plans")
def travel_packing(c: Ctx):
    country, weather = c.pick(COUNTRIES), c.pick(WEATHER)
    thing1, thing2 = c.pick(["sunscreen", "a warm coat", "hiking boots", "an umbrella",
                             "a swimsuit", "a sun hat", "a phrase book", "a travel adapter",
                             "a first aid kit", "a torch"]), c.pick(["snacks", "a good book", "a camera",
                                                                       "some cash", "a map", "earplugs"])
    day = c.pick(DAYS)
    turns = [
        f"Are you ready for your trip to {country}?",
        f"Almost. I'm leaving on {day}, but I haven't packed yet.",
        f"What's the weather like there now?",
        f"The forecast says it'll be {weather[0]} all week.",
        f"Then don't forget {thing1}. And take {thing2} for the journey.",
        c.alt("Good idea. I'll put them on my list.", "Thanks, I almost forgot about that."),
    ]
    summary = [f"{P2} is leaving for {country} on {day} and the weather there will be {weather[0]}.",
               f"{P1} reminds {P2} to take {thing1} and {thing2}."]
    return turns, summary


@template("directions")
def directions_walk(c: Ctx):
    place, landmark, street = c.pick(PLACES), c.pick(LANDMARKS), c.pick(STREETS)
    minutes = c.num(3, 20)
    turn = c.alt("left", "right")
    turns = [
        c.alt(f"Excuse me, could you tell me how to get to {place}?",
              f"Sorry to bother you. Do you know where {place} is?"),
        f"Sure. Go straight down {street} until you reach {landmark}.",
        "And then?",
        f"Then turn {turn}. You'll see it on your {c.alt('left', 'right')}.",
        "Is it far from here?",
        f"Not really. It's about {minutes} minutes on foot.",
    ]
    if c.coin():
        turns += ["Great. Thank you very much.", "You're welcome. Enjoy your day."]
        summary = [f"{P1} asks the way to {place}.",
                   f"{P2} tells {P1} to go down {street} and turn {turn} at {landmark}. It takes about {minutes} minutes."]
    else:
        turns += ["Is there a bus? My feet are tired.",
                  f"Yes, the number {c.num(2, 99)} stops at {landmark}."]
        summary = [f"{P1} asks the way to {place}.",
                   f"{P2} says to go down {street} and turn {turn} at {landmark}, or take the bus."]
    return turns, summary


@template("directions")
def directions_lost(c: Ctx):
    place, street, landmark = c.pick(PLACES), c.pick(STREETS), c.pick(LANDMARKS)
    stops = c.num(2, 8)
    turns = [
        f"Excuse me, I think I'm lost. Is this {street}?",
        f"No, {street} is on the other side of the river. Where are you going?",
        f"To {place}. I have to be there by {c.pick(TIMES)}.",
        f"You should take the metro. The station is next to {landmark}. It's {NUMBER_WORDS[stops]} stops from here.",
        c.alt("Which line should I take?", "Do I need to change trains?"),
        "Just take the green line. You don't need to change.",
        "Thanks a lot. You've been very helpful.",
    ]
    summary = [f"{P1} is lost on the way to {place}.",
               f"{P2} tells {P1} to take the green line from the station next to {landmark} for {NUMBER_WORDS[stops]} stops."]
    return turns, summary


@template("weather")
def weather_plans(c: Ctx):
    day = c.pick(["on Saturday", "on Sunday", "tomorrow", "this weekend", "on Friday afternoon"])
    bad, _ = c.pick([w for w in WEATHER if w[0] != "sunny"])
    outdoor, indoor = c.pick(OUTDOOR_PLANS), c.pick(INDOOR_PLANS)
    temp = c.num(2, 30)
    turns = [
        c.alt(f"Do you still want to {outdoor} {day}?", f"Are we still going to {outdoor} {day}?"),
        f"I'd love to, but have you seen the forecast? It's going to be {bad}.",
        f"Oh no. Really? How cold will it be?",
        f"Only about {temp} degrees.",
    ]
    if c.coin():
        turns += [f"Then let's {indoor} instead.", "Good idea. We can go outside another time."]
        summary = [f"{P1} and {P2} wanted to {outdoor} {day}, but it will be {bad}.",
                   f"They decide to {indoor} instead."]
    else:
        turns += [f"I don't mind a bit of bad weather. Let's {outdoor} anyway.",
                  "All right, but bring a warm jacket."]
        summary = [f"The forecast says it will be {bad} {day}, with about {temp} degrees.",
                   f"{P1} and {P2} decide to {outdoor} anyway."]
    return turns, summary


@template("weather")
def weather_smalltalk(c: Ctx):
    city, season = c.pick(CITIES), c.pick(["spring", "summer", "autumn", "winter"])
    weather = c.pick([w for w in WEATHER if season == "winter" or w[0] != "snowy"])
    hometown = c.pick(CITIES)
    turns = [
        c.alt(f"What's the weather like in {city} in {season}?", f"Is it nice in {city} in {season}?"),
        f"It's usually {weather[0]}. We get a lot of {weather[1]} at that time of year.",
        f"Really? In {hometown} it's quite different.",
        "What's it like there?",
        f"It's mild most of the year. I prefer it that way.",
        c.alt("Lucky you. I'd like to visit some day.", "Sounds nice. Maybe I should move there."),
    ]
    summary = [f"{P2} says that {city} is usually {weather[0]} in {season}.",
               f"{P1} says the weather in {hometown} is mild most of the year."]
    return turns, summary


@template("apartment")
def apartment_viewing(c: Ctx):
    rooms, rent, feature = c.num(1, 4), c.num(6, 25) * 100, c.pick(APARTMENT_FEATURES)
    street, deposit = c.pick(STREETS), c.pick(["one month's rent", "two months' rent", "three months' rent"])
    turns = [
        f"So this is the flat on {street}. It has {NUMBER_WORDS[rooms]} bedroom{'s' if rooms > 1 else ''} and {feature}.",
        c.alt("It's lovely. How much is the rent?", "I really like it. What's the monthly rent?"),
        f"It's {rent} dollars a month, and the deposit is {deposit}.",
        "Are the bills included?",
    ]
    if c.coin():
        turns += ["Water is included, but you pay for electricity and gas.",
                  "OK. I think I'll take it. When can I move in?",
                  f"From the first of {c.pick(MONTHS)}."]
        summary = [f"{P1} shows {P2} a flat on {street} with {feature}.",
                   f"The rent is {rent} dollars a month and {P2} decides to take it."]
    else:
        turns += ["No, they're extra.",
                  "Hmm, then it's a bit too expensive for me. I'll think about it."]
        summary = [f"{P1} shows {P2} a flat on {street} with {feature}.",
                   f"The rent is {rent} dollars a month without bills, so {P2} will think about it."]
    return turns, summary


@template("apartment")
def apartment_repair(c: Ctx):
    problem, day, time = c.pick(APARTMENT_REPAIRS), c.pick(WEEKDAYS), c.pick(TIMES)
    turns = [
        c.alt("Hello, this is your tenant from flat 4B.", "Hi, it's your tenant from the second floor."),
        "Hello. Is something wrong?",
        f"Yes, {problem}. It started last week.",
        c.alt("Oh, I'm sorry. I'll send a repairman.", "I see. I'll ask a repairman to come and have a look."),
        f"When can he come? I work until {c.pick(['five', 'six', 'four'])} on weekdays.",
        f"How about {day} at {time}?",
    ]
    if c.coin():
        turns.append("That works for me. Thank you.")
        summary = [f"{P1} tells the landlord that {problem}.",
                   f"{P2} will send a repairman on {day} at {time}."]
    else:
        turns += ["I can't be home then. Could I leave the key with my neighbour?",
                  "Sure, that's fine."]
        summary = [f"{P1} tells the landlord that {problem}.",
                   f"A repairman will come on {day} at {time} and get the key from the neighbour."]
    return turns, summary


@template("bank")
def bank_account(c: Ctx):
    account, doc1, doc2 = c.pick(BANK_ACCOUNTS), c.pick(BANK_DOCUMENTS), c.pick(BANK_DOCUMENTS)
    amount = c.num(1, 20) * 50
    turns = [
        c.alt("Good morning. What can I do for you?", "Hello, how can I help you today?"),
        f"I'd like to open {a(account)}.",
        f"Certainly. I'll need your {doc1} and your {doc2}.",
        "Here they are.",
        f"Thank you. How much would you like to put in to start with?",
        f"{amount} dollars, please.",
    ]
    if c.coin():
        turns += ["Fine. Your card will arrive by post within a week.", "Great. Thank you."]
        summary = [f"{P2} opens {a(account)} with {amount} dollars.",
                   f"{P2} shows {a(doc1)} and {a(doc2)}, and the card will arrive within a week."]
    else:
        turns += ["Would you like online banking as well?", "Yes, please. That would be very useful."]
        summary = [f"{P2} opens {a(account)} with {amount} dollars.",
                   f"{P2} shows {a(doc1)} and {a(doc2)}, and also asks for online banking."]
    return turns, summary


@template("bank")
def bank_lost_card(c: Ctx):
    place, day = c.pick(LOST_PLACES), c.pick(DAYS)
    amount = c.num(20, 400)
    turns = [
        c.alt("Hello, I think I've lost my bank card.", "Hi. I need help. My bank card is missing."),
        "When did you last use it?",
        f"On {day}. I think I left it {place}.",
        "I'll block it right away. Let me check your account for any strange payments.",
    ]
    if c.coin():
        turns += [f"Hmm, there is a payment of {amount} dollars this morning. Was that you?",
                  "No, it wasn't me!",
                  "Don't worry. We will investigate and return the money. A new card will arrive in five days."]
        summary = [f"{P1} lost a bank card {place} on {day} and {P2} blocks it.",
                   f"There is a strange payment of {amount} dollars, which the bank will investigate."]
    else:
        turns += ["Everything looks normal. Your new card will arrive in five days.",
                  c.alt("What a relief. Thank you.", "Thank you so much for your help.")]
        summary = [f"{P1} lost a bank card {place} on {day} and {P2} blocks it.",
                   f"There are no strange payments and a new card will arrive in five days."]
    return turns, summary


@template("bank")
def bank_exchange(c: Ctx):
    currency, amount = c.pick(CURRENCIES), c.num(2, 20) * 50
    country = c.pick(COUNTRIES)
    fee = c.num(2, 9)
    turns = [
        f"Hello. I'd like to change some money into {currency}.",
        "Certainly. How much would you like to change?",
        f"{amount} dollars. I'm going to {country} next week.",
        f"No problem. There is a fee of {fee} dollars. Is that OK?",
    ]
    if c.coin():
        turns += ["Yes, that's fine.", f"Here are your {currency}. Have a good trip!"]
        summary = [f"{P1} changes {amount} dollars into {currency} before a trip to {country}.",
                   f"{P1} pays a fee of {fee} dollars."]
    else:
        turns += ["Hmm, that's too much. I'll use a cash machine when I get there.",
                  "As you wish. Have a good trip."]
        summary = [f"{P1} wants to change {amount} dollars into {currency} before a trip to {country}.",
                   f"{P1} thinks the fee of {fee} dollars is too much."]
    return turns, summary


@template("airport")
def airport_checkin(c: Ctx):
    city, airline, gate = c.pick(CITIES), c.pick(AIRLINES), c.num(1, 40)
    bags, seat = c.num(1, 3), c.alt("window", "aisle")
    time = c.pick(TIMES)
    turns = [
        c.alt(f"Good morning. Welcome to {airline}. Where are you flying today?",
              f"Hello, is this the {airline} desk? I'm checking in."),
        f"{c.alt('To ' + city + '.', 'I am flying to ' + city + '.')} Here is my passport.",
        f"Thank you. How many bags are you checking in?",
        f"{cap(NUMBER_WORDS[bags])}{' bag' if bags == 1 else ' bags'}. And could I have {a(seat)} seat, please?",
        f"Sure. Your flight boards at {time} from gate {gate}.",
        c.alt("Thank you very much.", "Great. Is there a cafe near the gate?"),
    ]
    summary = [f"{P2} checks in for {a(airline)} flight to {city} with {NUMBER_WORDS[bags]} bag{'s' if bags > 1 else ''}.",
               f"{P2} gets {a(seat)} seat, and the flight boards at {time} from gate {gate}."]
    return turns, summary


@template("airport")
def airport_delay(c: Ctx):
    city, reason, hours = c.pick(CITIES), c.pick(DELAY_REASONS), c.num(2, 6)
    turns = [
        f"Excuse me, is the flight to {city} on time?",
        f"I'm sorry, it's delayed by {NUMBER_WORDS[hours]} hours because of {reason}.",
        c.alt("Oh no. I have a meeting there this evening.", "That's terrible. My family is waiting for me."),
    ]
    if c.coin():
        turns += ["There is another flight in one hour, but it stops on the way. Would you like to change?",
                  "Yes, please. Anything that gets me there sooner."]
        summary = [f"{P1}'s flight to {city} is delayed by {NUMBER_WORDS[hours]} hours because of {reason}.",
                   f"{P1} changes to another flight that leaves in one hour."]
    else:
        turns += ["I understand. Here is a meal voucher for the restaurant while you wait.",
                  "Well, thank you. I'll wait there."]
        summary = [f"{P1}'s flight to {city} is delayed by {NUMBER_WORDS[hours]} hours because of {reason}.",
                   f"{P2} gives {P1} a meal voucher."]
    return turns, summary


@template("train tickets")
def train_ticket(c: Ctx):
    city, time, platform = c.pick(CITIES), c.pick(TIMES), c.num(1, 12)
    price, ret = c.num(12, 95), c.coin()
    kind = "return" if ret else "single"
    turns = [
        c.alt("Next, please. Where are you going?", "Good morning. How can I help?"),
        f"{a(kind).capitalize()} ticket to {city}, please.",
        f"When would you like to travel?",
        f"On the next train, if possible.",
        f"The next train leaves at {time} from platform {platform}. That's {price} dollars.",
    ]
    if c.coin():
        turns += ["Do I need to change?", "No, it's a direct train."]
        summary = [f"{P2} buys {a(kind)} ticket to {city} for {price} dollars.",
                   f"The direct train leaves at {time} from platform {platform}."]
    else:
        turns += ["Is there a discount for students?",
                  "Yes, with a student card it's half price.",
                  "Great, here is my card."]
        summary = [f"{P2} buys {a(kind)} ticket to {city} with a student discount.",
                   f"The train leaves at {time} from platform {platform}."]
    return turns, summary


@template("train tickets")
def train_missed(c: Ctx):
    city, time, nxt = c.pick(CITIES), c.pick(TIMES), c.pick(TIMES)
    turns = [
        f"Excuse me, I just missed the {time} train to {city}. Can I use my ticket on the next one?",
        "Let me see your ticket, please.",
        "Here it is.",
    ]
    if c.coin():
        turns += [f"Yes, this ticket is flexible. The next train is at {nxt}.",
                  "Oh, good. Thank you so much."]
        summary = [f"{P1} missed the {time} train to {city}.",
                   f"{P2} says the ticket is flexible, so {P1} can take the {nxt} train."]
    else:
        turns += [f"I'm sorry, this ticket is only valid on the {time} train. You'll need to pay {c.num(5, 30)} dollars to change it.",
                  f"Oh well. Fine, I'll pay. When is the next one?",
                  f"At {nxt}."]
        summary = [f"{P1} missed the {time} train to {city}.",
                   f"{P1} has to pay to change the ticket and will take the {nxt} train."]
    return turns, summary


@template("birthday party")
def party_plan(c: Ctx):
    friend, place, food = c.name(), c.pick(PARTY_PLACES), c.pick(PARTY_FOODS)
    day, task = c.pick(["Friday", "Saturday", "Sunday"]), c.pick(PARTY_TASKS)
    age = c.num(18, 60)
    turns = [
        f"{friend} turns {age} next week. Shall we throw a surprise party?",
        c.alt("That's a great idea! Where should we have it?", "Oh, I love that. Where?"),
        f"How about {place} on {day} evening?",
        f"Perfect. I can make {food}.",
        f"Great. Could you also {task}?",
    ]
    if c.coin():
        turns += ["Sure, no problem.", f"Thanks. Remember, not a word to {friend}!"]
        summary = [f"{P1} and {P2} plan a surprise party for {friend}'s {ordinal(age)} birthday {place} on {day}.",
                   f"{P2} will make {food} and {task}."]
    else:
        turns += [f"Sorry, I'm too busy this week. Maybe ask someone else?",
                  "OK, I'll ask around."]
        summary = [f"{P1} and {P2} plan a surprise party for {friend}'s {ordinal(age)} birthday {place} on {day}.",
                   f"{P2} will make {food}, but has no time to {task}."]
    return turns, summary


@template("birthday party")
def party_invite(c: Ctx):
    day, time, place = c.pick(["Friday", "Saturday", "Sunday"]), c.pick(EVENING_TIMES), c.pick(PARTY_PLACES)
    bring = c.pick(BRING_ITEMS)
    turns = [
        c.alt(f"I'm having a birthday party on {day}. Would you like to come?",
              f"Are you free on {day}? It's my birthday and I'm having a party."),
        "Oh, how nice! Where is it?",
        f"It's {place}, starting at {time}.",
    ]
    if c.coin():
        turns += ["I'd love to come. Should I bring anything?",
                  f"Maybe some {bring}, if you like.",
                  "No problem. See you then!"]
        summary = [f"{P1} invites {P2} to a birthday party {place} on {day} at {time}.",
                   f"{P2} accepts and will bring some {bring}."]
    else:
        turns += [f"Oh, I'm so sorry. I'm visiting my parents on {day}.",
                  "That's a pity. Maybe next time.",
                  "Definitely. Happy birthday in advance!"]
        summary = [f"{P1} invites {P2} to a birthday party {place} on {day} at {time}.",
                   f"{P2} can't come because of a visit to the parents."]
    return turns, summary


@template("studying")
def study_exam(c: Ctx):
    subject, day, place = c.pick(SUBJECTS), c.pick(DAYS), c.pick(["the library", "my flat", "the cafe on campus", "the study room"])
    chapter = c.num(2, 12)
    turns = [
        f"Are you ready for the {subject} exam on {day}?",
        c.alt("Not at all. I still don't understand half of it.", "Not really. I'm really worried about it."),
        f"Why don't we study together? We could meet at {place}.",
        f"That would be great. What time?",
        f"How about {c.pick(TIMES)} tomorrow? We can start with chapter {chapter}.",
    ]
    if c.coin():
        turns += ["Perfect. I'll bring my notes.", "Good. And I'll bring some snacks."]
        summary = [f"{P2} is worried about the {subject} exam on {day}.",
                   f"{P1} and {P2} agree to study together at {place}, starting with chapter {chapter}."]
    else:
        turns += ["I can't tomorrow. Can we do it the day after?", "Sure, same time the day after."]
        summary = [f"{P2} is worried about the {subject} exam on {day}.",
                   f"{P1} and {P2} will study together at {place} the day after tomorrow."]
    return turns, summary


@template("studying")
def study_teacher(c: Ctx):
    subject, task, day = c.pick(SUBJECTS), c.pick(STUDY_TASKS), c.pick(WEEKDAYS)
    grade = c.pick(["an A", "a B", "a C", "a B plus", "an A minus"])
    turns = [
        f"Professor, do you have a minute? It's about my {subject} {task}.",
        f"Of course. I read it yesterday. You got {grade}.",
    ]
    if grade.startswith("an A"):
        turns += ["Really? I'm so happy!",
                  "You did excellent work. Your arguments were very clear.",
                  "Thank you. I worked hard on it."]
        summary = [f"{P2} tells {P1} that {P1} got {grade} for the {subject} {task}.",
                   f"{P2} praises the clear arguments."]
    else:
        turns += ["Oh. Can I do anything to improve it?",
                  f"Yes. You can rewrite it and hand it in again by {day}.",
                  "Thank you. I'll do that."]
        summary = [f"{P2} tells {P1} that {P1} got {grade} for the {subject} {task}.",
                   f"{P1} can rewrite it and hand it in by {day}."]
    return turns, summary


@template("library")
def library_borrow(c: Ctx):
    book, author = c.pick(BOOK_TITLES), f"{c.name()} {c.pick(SURNAMES)}"
    weeks = c.num(2, 4)
    turns = [
        c.alt(f"Hello, I'm looking for {book} by {author}.", f"Hi. Do you have {book}? It's by {author}."),
        "Let me check the computer.",
    ]
    if c.coin():
        turns += [f"Yes, it's on the second floor, in the fiction section.",
                  "Great. How long can I borrow it for?",
                  f"For {NUMBER_WORDS[weeks]} weeks. You can renew it online.",
                  "Thank you."]
        summary = [f"{P1} wants to borrow {book} by {author}.",
                   f"{P2} says it is on the second floor and can be borrowed for {NUMBER_WORDS[weeks]} weeks."]
    else:
        turns += ["I'm sorry, all the copies are out at the moment.",
                  "Oh. Can I reserve one?",
                  "Yes. We'll send you an email when it comes back.",
                  "Perfect, thanks."]
        summary = [f"{P1} wants to borrow {book} by {author}, but all copies are out.",
                   f"{P1} reserves a copy."]
    return turns, summary


@template("library")
def library_overdue(c: Ctx):
    book, days, fine = c.pick(BOOK_TITLES), c.num(3, 20), c.num(1, 9)
    turns = [
        f"Hi, I'd like to return {book}.",
        f"Thank you. I'm afraid it's {days} days late. There's a fine of {fine} dollars.",
    ]
    if c.coin():
        turns += [c.alt("Oh, I'm sorry. I was away on holiday. Here you are.", "Sorry about that. I'll pay now."),
                  "Thank you. Would you like to borrow anything else?",
                  "Not today, thanks."]
        summary = [f"{P1} returns {book} {days} days late.", f"{P1} pays a fine of {fine} dollars."]
    else:
        turns += ["Really? I thought I renewed it online last week.",
                  "Let me check. Oh, you're right. There was a mistake in our system. No fine then.",
                  "Thank you for checking."]
        summary = [f"{P1} returns {book} and {P2} asks for a fine of {fine} dollars.",
                   f"{P1} had renewed it online, so there is no fine."]
    return turns, summary


@template("post office")
def post_parcel(c: Ctx):
    city, contents = c.pick(CITIES), c.pick(PARCEL_CONTENTS)
    service, duration = c.pick(PARCEL_SERVICES)
    price = c.num(4, 60)
    turns = [
        c.alt(f"Hello, I'd like to send this parcel to {city}.", f"Hi. How much is it to send this parcel to {city}?"),
        "What's inside?",
        f"Just {contents}.",
        f"With {service} it takes {duration} and costs {price} dollars.",
    ]
    if c.coin():
        turns += ["That's fine. I'll send it that way.", "Please fill in this form and sign here."]
        summary = [f"{P1} sends a parcel with {contents} to {city}.",
                   f"It goes by {service}, costs {price} dollars and takes {duration}."]
    else:
        turns += ["Is there anything cheaper?", "Economy post is cheaper, but it takes two weeks.",
                  "That's OK, there's no hurry."]
        summary = [f"{P1} sends a parcel with {contents} to {city}.",
                   f"{P1} chooses economy post, which takes two weeks, instead of {service}."]
    return turns, summary


@template("phone message")
def phone_message(c: Ctx):
    caller, boss, company = c.name(), c.formal(), c.pick(COMPANIES)
    content, number = c.pick(MESSAGE_CONTENTS), f"{c.num(200, 999)} {c.num(1000, 9999)}"
    turns = [
        c.alt(f"Good morning, this is {caller} from {company}. May I speak to {boss}?",
              f"Hello, {caller} here, from {company}. Is {boss} available?"),
        c.alt(f"I'm afraid {boss} is in a meeting. Can I take a message?",
              f"Sorry, {boss} is out of the office today. Would you like to leave a message?"),
        f"Yes, please. Could you tell {boss} that {content}?",
        f"Of course. Does {boss} have your number?",
        f"Maybe not. It's {number}.",
        c.alt("Got it. I'll pass on the message.", "Thank you. I'll make sure the message gets through."),
    ]
    summary = [f"{caller} from {company} calls {boss}, who is not available.",
               f"{P1} leaves a message that {content}."]
    return turns, summary


@template("phone message")
def phone_wrong_number(c: Ctx):
    name1, name2 = c.name(), c.name()
    number = f"{c.num(200, 999)} {c.num(1000, 9999)}"
    turns = [
        f"Hello, is that {name1}?",
        f"No, I'm afraid you have the wrong number. This is {name2}.",
        f"Oh, sorry. Isn't this {number}?",
        "No, the last two numbers are different.",
        "I'm so sorry to bother you.",
        c.alt("No problem. It happens all the time.", "That's all right. Have a nice day."),
    ]
    summary = [f"{P1} calls {number} to speak to {name1}, but it is the wrong number.",
               f"{P2} is {name2}."]
    return turns, summary


@template("hobbies")
def hobby_talk(c: Ctx):
    hobby, (reason, reason3), years = c.pick(HOBBIES), c.pick(HOBBY_REASONS), c.num(2, 12)
    reason3 = reason3.format(p=P2)
    other = c.pick(HOBBIES)
    turns = [
        c.alt("What do you do in your free time?", "Do you have any hobbies?"),
        f"I'm really into {hobby}. I've been doing it for {NUMBER_WORDS[years]} years.",
        "Why do you like it so much?",
        f"Well, {reason}. What about you?",
        f"I like {other}, but I don't have much time for it these days.",
    ]
    if c.coin():
        turns += [f"You should try {hobby} with me some time.", "Sure, why not?"]
        summary = [f"{P2} has enjoyed {hobby} for {NUMBER_WORDS[years]} years because {reason3}.",
                   f"{P1} likes {other} and agrees to try {hobby} with {P2}."]
    else:
        turns += ["That's a pity. You should make time for it.", "You're right. Maybe next month."]
        summary = [f"{P2} has enjoyed {hobby} for {NUMBER_WORDS[years]} years because {reason3}.",
                   f"{P1} likes {other} but has little time for it."]
    return turns, summary


@template("hobbies")
def hobby_club(c: Ctx):
    hobby, day, time = c.pick(HOBBIES), c.pick(WEEKDAYS), c.pick(EVENING_TIMES)
    fee = c.num(5, 40)
    turns = [
        f"Hi, I saw your poster about the {hobby} club. Can anyone join?",
        "Yes, of course. Beginners are very welcome.",
        "When do you meet?",
        f"Every {day} at {time}, in the community centre.",
        "Is there a fee?",
        f"It's {fee} dollars a month.",
    ]
    if c.coin():
        turns += ["OK, I'd like to join.", f"Wonderful. See you on {day}!"]
        summary = [f"{P1} asks about the {hobby} club, which meets every {day} at {time}.",
                   f"It costs {fee} dollars a month and {P1} joins."]
    else:
        turns += ["Can I come once to see if I like it?", "Sure, the first time is free."]
        summary = [f"{P1} asks about the {hobby} club, which meets every {day} at {time}.",
                   f"It costs {fee} dollars a month, but the first visit is free."]
    return turns, summary


@template("hobbies")
def hobby_instrument(c: Ctx):
    instrument, teacher, months = c.pick(INSTRUMENTS), c.name(), c.num(2, 11)
    song = c.pick(["a Beatles song", "a piece by Bach", "a jazz standard", "a folk song", "a pop song"])
    turns = [
        f"I didn't know you played the {instrument}!",
        f"I only started {NUMBER_WORDS[months]} months ago. I take lessons with {teacher}.",
        "Is it difficult?",
        c.alt("Very. My fingers hurt after every lesson.", "Yes, but it gets easier every week."),
        "Can you play anything yet?",
        f"Just {song}. I'm practising for a small concert in {c.pick(MONTHS)}.",
    ]
    summary = [f"{P2} started playing the {instrument} {NUMBER_WORDS[months]} months ago and takes lessons with {teacher}.",
               f"{P2} can play {song}."]
    return turns, summary


@template("sports")
def sports_match(c: Ctx):
    city1, city2 = c.pick(CITIES), c.pick(CITIES)
    team1, team2 = f"the {city1} {c.pick(TEAM_NAMES)}", f"the {city2} {c.pick(TEAM_NAMES)}"
    s1, s2 = c.num(0, 5), c.num(0, 5)
    sport = c.pick(["football", "hockey", "handball"])
    turns = [
        f"Did you watch the {sport} match last night?",
        f"No, I missed it. Who was playing?",
        f"{cap(team1)} against {team2}.",
        "Who won?",
    ]
    if s1 == s2:
        turns += [f"Nobody. It was a draw, {s1} to {s2}.", "Oh well. Was it a good game?", "Not really. Pretty boring."]
        summary = [f"{P1} tells {P2} about the {sport} match between {team1} and {team2}.",
                   f"It ended in a draw, {s1} to {s2}."]
    else:
        win, lose = (team1, team2) if s1 > s2 else (team2, team1)
        hi, lo = max(s1, s2), min(s1, s2)
        turns += [f"{cap(win)} won {hi} to {lo}.", "Was it a good game?",
                  "It was amazing. The last goal came in the final minute."]
        summary = [f"{P1} tells {P2} about the {sport} match between {team1} and {team2}.",
                   f"{cap(win)} won {hi} to {lo}."]
    return turns, summary


@template("sports")
def sports_play(c: Ctx):
    sport, day, time = c.pick(SPORTS), c.pick(DAYS), c.pick(TIMES)
    place = c.pick(["the sports centre", "the park", "the school gym", "the club", "the beach"])
    turns = [
        c.alt(f"Do you want to play {sport} on {day}?", f"Fancy a game of {sport} on {day}?"),
        "Sure. Where?",
        f"At {place}. Is {time} OK?",
    ]
    if c.coin():
        turns += ["Yes, that's fine. I haven't played for ages, though.",
                  "Don't worry, I'm not very good either.", "Great, see you there."]
        summary = [f"{P1} and {P2} will play {sport} at {place} on {day} at {time}."]
    else:
        late = c.pick([t for t in TIMES if t != time])
        turns += [f"{time} is too early for me. Can we make it {late}?",
                  f"{late} is fine. I'll book the court.", "Great. Thanks."]
        summary = [f"{P1} invites {P2} to play {sport} at {place} on {day}.",
                   f"They move the time from {time} to {late}."]
    return turns, summary


@template("movies")
def movie_choose(c: Ctx):
    g1, g2 = c.pick(GENRES), c.pick(GENRES)
    title1, title2 = c.pick(FILM_TITLES), c.pick(FILM_TITLES)
    time = c.pick(EVENING_TIMES)
    turns = [
        "Let's go to the cinema tonight. What do you want to see?",
        f"There's a new {g1} called {title1}.",
        c.alt(f"Hmm, I'm not in the mood for {a(g1)}. What about {title2}? It's {a(g2)}.",
              f"I'd rather see {title2}. It's {a(g2)} and the reviews are great."),
    ]
    if c.coin():
        turns += [f"OK, {title2} it is. When does it start?", f"At {time}. I'll buy the tickets online."]
        summary = [f"{P2} wants to see {title1}, but {P1} prefers {title2}.",
                   f"They decide to watch {title2} at {time}."]
    else:
        turns += [f"But I've heard {title1} is really good. Please?",
                  f"Oh, all right. We'll see {title1}. It starts at {time}."]
        summary = [f"{P2} wants to see {title1}, but {P1} prefers {title2}.",
                   f"In the end they will watch {title1} at {time}."]
    return turns, summary


@template("movies")
def movie_review(c: Ctx):
    title = c.pick(FILM_TITLES)
    opinion, reason = c.pick(FILM_OPINIONS)
    friend = c.name()
    turns = [
        f"Have you seen {title} yet?",
        f"Yes, I saw it with {friend} on {c.pick(DAYS)}.",
        "What did you think?",
        f"It was {opinion}. {cap(reason)}.",
        c.alt("Should I go and see it?", "So would you recommend it?"),
    ]
    good = opinion in ("wonderful", "amazing", "funny", "exciting", "moving")
    if good:
        turns += ["Absolutely. You'll love it.", "Great, I'll go this weekend."]
        summary = [f"{P2} saw {title} with {friend} and thought it was {opinion} because {reason}.",
                   f"{P2} recommends it to {P1}."]
    else:
        turns += ["Honestly, I'd wait until it's on television.", "OK, thanks for the warning."]
        summary = [f"{P2} saw {title} with {friend} and thought it was {opinion} because {reason}.",
                   f"{P2} does not recommend it."]
    return turns, summary


@template("cooking")
def cooking_recipe(c: Ctx):
    dish, ingredients = c.pick(RECIPES)
    step, minutes = c.pick(COOKING_STEPS), c.num(10, 60, 5)
    i1, i2, i3 = ingredients
    turns = [
        f"This is delicious! How did you make {dish}?",
        f"It's easy. You just need {i1}, {i2} and {i3}.",
        "That's all? What do you do with them?",
        f"You {step}. The whole thing takes about {minutes} minutes.",
    ]
    if c.coin():
        turns += ["I'll try it this weekend.", "Let me know how it turns out!"]
        summary = [f"{P2} explains how to make {dish} with {i1}, {i2} and {i3}.",
                   f"{P1} will try it this weekend."]
    else:
        turns += ["Could you write the recipe down for me?", "Of course. I'll send it to you tonight."]
        summary = [f"{P2} explains how to make {dish} with {i1}, {i2} and {i3}.",
                   f"{P2} will send {P1} the recipe tonight."]
    return turns, summary


@template("cooking")
def cooking_dinner(c: Ctx):
    dish, missing, guest = c.pick(DISHES), c.pick(GROCERIES), c.name()
    time = c.pick(EVENING_TIMES)
    turns = [
        f"What are you cooking tonight?",
        f"The {dish}. {guest} is coming for dinner at {time}.",
        "Smells good. Do you need any help?",
        f"Actually, yes. We've run out of {missing}. Could you get some from the shop?",
    ]
    if c.coin():
        turns += ["Sure, I'll go right now.", "Thanks. And please hurry!"]
        summary = [f"{P2} is cooking the {dish} because {guest} is coming at {time}.",
                   f"{P1} goes to buy {missing}."]
    else:
        turns += ["The shop is closed already. Can you make it without?",
                  "I suppose so. It won't taste quite the same, though."]
        summary = [f"{P2} is cooking the {dish} because {guest} is coming at {time}.",
                   f"They have no {missing} and the shop is closed."]
    return turns, summary


@template("car repair")
def car_garage(c: Ctx):
    car, problem, fix = c.pick(CAR_TYPES), c.pick(CAR_PROBLEMS), c.pick(CAR_FIXES)
    price, day = c.num(8, 90) * 10, c.pick(WEEKDAYS)
    turns = [
        c.alt(f"Hello, I'm having trouble with my {car}. {cap(problem)}.",
              f"Hi. Could you have a look at my {car}? {cap(problem)}."),
        c.alt("Let me take a look. How long has it been like this?", "OK. When did it start?"),
        c.alt("About a week.", "Since last weekend."),
        f"We'll need to {fix}. It will cost about {price} dollars.",
        "When will it be ready?",
    ]
    if c.coin():
        turns += [f"By {day} afternoon.", "OK, go ahead. Please call me when it's done."]
        summary = [f"{P1} takes a {car} to the garage because {problem}.",
                   f"{P2} will {fix} for about {price} dollars and it will be ready by {day}."]
    else:
        turns += [f"By {day}, but only if the part arrives in time.",
                  "Hmm, that's too expensive. I'll get a second opinion first."]
        summary = [f"{P1} takes a {car} to the garage because {problem}.",
                   f"{P2} says it costs about {price} dollars, so {P1} wants a second opinion."]
    return turns, summary


@template("car repair")
def car_accident(c: Ctx):
    street, car = c.pick(STREETS), c.pick(CAR_TYPES)
    damage = c.pick(["a broken mirror", "a scratch on the door", "a dent in the bumper",
                     "a broken headlight", "a cracked window"])
    insurer = c.pick(COMPANIES)
    turns = [
        f"Are you all right? Your {car} just hit my car!",
        c.alt("I'm so sorry. I didn't see you. Are you hurt?", "Oh no, I'm terribly sorry. Is everyone OK?"),
        f"I'm fine, but look, there's {damage}.",
        f"You're right. Let's exchange details. My insurance is with {insurer}.",
        f"OK. Here's my number. We're on {street}, so let's write that down too.",
        "Good idea. Again, I'm really sorry.",
    ]
    summary = [f"{P2}'s {car} hits {P1}'s car on {street} and causes {damage}.",
               f"{P2} apologises and they exchange details."]
    return turns, summary


@template("moving house")
def moving_help(c: Ctx):
    day, street, furniture = c.pick(["Saturday", "Sunday", "Friday"]), c.pick(STREETS), c.pick(FURNITURE)
    time = c.pick(TIMES)
    turns = [
        f"I'm moving to a new flat on {street} on {day}. Could you help me?",
        c.alt("Of course. What time?", "Sure, I'd be happy to. When do you start?"),
        f"At {time}. The hardest part will be the {furniture}.",
        "Do you have a van?",
    ]
    if c.coin():
        turns += ["Yes, I've rented one for the whole day.", "Great. I'll be there. You owe me a pizza!", "Deal!"]
        summary = [f"{P1} is moving to {street} on {day} and asks {P2} for help.",
                   f"{P2} will come at {time} to help carry the {furniture}."]
    else:
        turns += ["No, I was hoping you could bring yours.",
                  "I can, but only in the afternoon.", "That's fine. We'll start the small things first."]
        summary = [f"{P1} is moving to {street} on {day} and asks {P2} for help with the {furniture}.",
                   f"{P2} will bring a van in the afternoon."]
    return turns, summary


@template("moving house")
def moving_new_home(c: Ctx):
    city, feature, commute = c.pick(CITIES), c.pick(APARTMENT_FEATURES), c.pick(COMMUTE_MODES)
    minutes = c.num(5, 40)
    turns = [
        f"I heard you moved to {city}. How's the new place?",
        f"I love it. It has {feature}.",
        "And how do you get to work now?",
        f"I {commute}. It only takes {minutes} minutes.",
        "That's much better than before.",
        c.alt("Yes, I used to spend two hours a day on the road.", "Definitely. I have so much more free time now."),
    ]
    summary = [f"{P2} moved to {city} and the new place has {feature}.",
               f"{P2} can {commute} to work in {minutes} minutes."]
    return turns, summary


@template("pets")
def pet_vet(c: Ctx):
    pet, name, problem = c.pick(PETS), c.pick(PET_NAMES), c.pick(PET_PROBLEMS)
    days = c.num(2, 9)
    turns = [
        f"Good morning. This is {name}, my {pet}. {name} {problem}.",
        "How long has it been like this?",
        f"About {NUMBER_WORDS[days]} days.",
        c.alt("Let me have a look.", f"Let me examine {name}."),
    ]
    if c.coin():
        turns += ["It's just a small infection. Give these tablets once a day for a week.",
                  "Thank you, doctor. I was so worried."]
        summary = [f"{P1} brings {name} the {pet} to the vet because {name} {problem}.",
                   f"{P2} finds a small infection and gives tablets for a week."]
    else:
        turns += ["I'd like to do some tests. Can you leave the animal here until tomorrow?",
                  "Of course. Please call me when you know more."]
        summary = [f"{P1} brings {name} the {pet} to the vet because {name} {problem}.",
                   f"{P2} will do some tests and keep {name} until tomorrow."]
    return turns, summary


@template("pets")
def pet_sitting(c: Ctx):
    pet, name, task = c.pick(PETS), c.pick(PET_NAMES), c.pick(PET_TASKS)
    city, days = c.pick(CITIES), c.num(2, 10)
    turns = [
        f"Could you look after my {pet}, {name}, while I'm in {city}?",
        "How long will you be away?",
        f"{cap(NUMBER_WORDS[days])} days.",
    ]
    if c.coin():
        turns += ["Sure. What do I need to do?",
                  f"Just {task}. I'll leave you the key.", "No problem. Have a good trip."]
        summary = [f"{P1} asks {P2} to look after {name} the {pet} for {NUMBER_WORDS[days]} days.",
                   f"{P2} agrees to {task}."]
    else:
        turns += ["Sorry, I'm away that week too. Have you asked your sister?",
                  "Good idea. I'll call her tonight."]
        summary = [f"{P1} asks {P2} to look after {name} the {pet} for {NUMBER_WORDS[days]} days.",
                   f"{P2} is away too and suggests asking {P1}'s sister."]
    return turns, summary


@template("vacation")
def vacation_story(c: Ctx):
    country, activity, days = c.pick(COUNTRIES), c.pick(VACATION_ACTIVITIES), c.num(4, 12)
    weather = c.pick(WEATHER)
    turns = [
        c.alt("Welcome back! How was your holiday?", "You look relaxed. Where have you been?"),
        f"I spent {NUMBER_WORDS[days]} days in {country}. It was fantastic.",
        "What did you do there?",
        f"We {activity}.",
        "And the weather?",
        f"Mostly {weather[0]}, but we didn't mind.",
    ]
    if c.coin():
        turns += ["I'd love to go there one day.", "You should. I'll show you the photos."]
        summary = [f"{P2} spent {NUMBER_WORDS[days]} days in {country} and {activity}.",
                   f"{P2} will show {P1} the photos."]
    else:
        turns += ["Would you go back?", "Definitely. Maybe next year."]
        summary = [f"{P2} spent {NUMBER_WORDS[days]} days in {country} and {activity}.",
                   f"The weather was mostly {weather[0]}."]
    return turns, summary


@template("vacation")
def vacation_booking(c: Ctx):
    country, month, nights = c.pick(COUNTRIES), c.pick(MONTHS), c.num(3, 12)
    price = c.num(4, 30) * 100
    hotel = c.pick(["a beach hotel", "a mountain lodge", "a city apartment", "a small guesthouse",
                    "a farmhouse", "a resort with a pool"])
    turns = [
        c.alt("Welcome to Northwind Travel. How can I help?", "Hello, are you looking for a holiday?"),
        f"Yes, I'd like a trip to {country} in {month}.",
        f"We have {NUMBER_WORDS[nights]} nights in {hotel} for {price} dollars, flights included.",
        "Does that include meals?",
    ]
    if c.coin():
        turns += ["Breakfast and dinner are included.", "Sounds perfect. I'll book it."]
        summary = [f"{P2} books {NUMBER_WORDS[nights]} nights in {hotel} in {country} in {month}.",
                   f"It costs {price} dollars with flights, breakfast and dinner."]
    else:
        turns += ["Only breakfast.", "Hmm. Let me talk to my family first, and I'll come back."]
        summary = [f"{P1} offers {P2} {NUMBER_WORDS[nights]} nights in {hotel} in {country} for {price} dollars.",
                   f"{P2} will talk to the family first."]
    return turns, summary


@template("work meeting")
def work_reschedule(c: Ctx):
    topic, day1, day2 = c.pick(MEETING_TOPICS), c.pick(WEEKDAYS), c.pick(WEEKDAYS)
    time = c.pick(TIMES)
    reason, reason3 = c.pick(MEETING_EXCUSES)
    reason3 = reason3.format(p=P1)
    turns = [
        f"Hi, about our meeting on {day1} about {topic}.",
        "Yes?",
        f"Could we move it? {cap(reason)}.",
    ]
    if c.coin():
        turns += [f"Sure. How about {day2} at {time}?", "That's perfect. I'll update the calendar.", "Thanks."]
        summary = [f"{P1} can't come to the meeting on {day1} about {topic} because {reason3}.",
                   f"They move it to {day2} at {time}."]
    else:
        turns += ["I'm afraid not. The whole team is coming, and it's the only free day.",
                  "OK, then I'll join by video call.", "Good idea."]
        summary = [f"{P1} can't come to the meeting on {day1} about {topic} because {reason3}.",
                   f"{P1} will join by video call."]
    return turns, summary


@template("work meeting")
def work_deadline(c: Ctx):
    task, day, (reason, reason3) = c.pick(WORK_TASKS), c.pick(WEEKDAYS), c.pick(WORK_REASONS)
    reason3 = reason3.format(p=P2)
    colleague = c.name()
    turns = [
        c.alt(f"How is {task} going? It's due on {day}.", f"Will {task} be ready by {day}?"),
        f"I'm sorry, I'm behind. {cap(reason)}.",
        "Hmm. What do you need?",
    ]
    if c.coin():
        later = c.pick([d for d in WEEKDAYS if d != day])
        turns += [f"Could I have until {later}?", f"All right, {later} at the latest.", "Thank you."]
        summary = [f"{P2} is behind with {task} because {reason3}.",
                   f"{P1} moves the deadline from {day} to {later}."]
    else:
        turns += [f"Maybe someone could help me with it.",
                  f"I'll ask {colleague} to help you. But it has to be ready by {day}.", "Understood."]
        summary = [f"{P2} is behind with {task} because {reason3}.",
                   f"{P1} asks {colleague} to help, but keeps the deadline on {day}."]
    return turns, summary


@template("neighbours")
def neighbour_noise(c: Ctx):
    noise, time = c.pick(NOISE_SOURCES), c.pick(["midnight", "two in the morning", "eleven at night", "six in the morning"])
    turns = [
        c.alt("Hi, I live in the flat below you. Sorry to bother you.", "Hello, I'm your neighbour from next door."),
        "Oh, hello. Is something wrong?",
        f"Well, last night there was {noise} until {time}, and I couldn't sleep.",
    ]
    if c.coin():
        turns += ["I'm so sorry. I didn't realise it was so loud. It won't happen again.",
                  "Thank you. I appreciate it.", "And please tell me if it does."]
        summary = [f"{P1} complains to {P2} about {noise} until {time}.",
                   f"{P2} apologises and promises it won't happen again."]
    else:
        turns += ["It was my birthday. It was only one night.",
                  "I understand, but next time could you warn me first?",
                  "Fair enough. I'll leave a note next time."]
        summary = [f"{P1} complains to {P2} about {noise} until {time}.",
                   f"{P2} explains it was a birthday and will warn {P1} next time."]
    return turns, summary


@template("neighbours")
def neighbour_favour(c: Ctx):
    task = c.pick(["water my plants", "collect my post", "feed my fish", "keep an eye on the house",
                   "take in a delivery", "put out the rubbish bins"])
    city, days = c.pick(CITIES), c.num(2, 12)
    turns = [
        f"Hi! I'm going to {city} for {NUMBER_WORDS[days]} days. Could I ask you a favour?",
        "Of course. What is it?",
        f"Could you {task} while I'm away?",
    ]
    if c.coin():
        turns += ["Sure, happy to help. Leave me a key.", f"Thank you so much. I'll bring you something from {city}."]
        summary = [f"{P1} is going to {city} for {NUMBER_WORDS[days]} days and asks {P2} to {task}.",
                   f"{P2} agrees."]
    else:
        turns += ["I'd like to, but I'm away myself next week.", "Oh, no problem. I'll ask someone else."]
        summary = [f"{P1} is going to {city} for {NUMBER_WORDS[days]} days and asks {P2} to {task}.",
                   f"{P2} is away too and can't help."]
    return turns, summary


@template("taxi")
def taxi_ride(c: Ctx):
    place, street, minutes = c.pick(PLACES), c.pick(STREETS), c.num(10, 45)
    fare, time = c.num(8, 60), c.pick(TIMES)
    turns = [
        c.alt("Where to?", "Good afternoon. Where would you like to go?"),
        f"To {place}, please. I need to be there by {time}.",
        f"No problem. It takes about {minutes} minutes if the traffic is OK.",
        c.alt("Could you take the road along the river? It's usually faster.", "Can we avoid the city centre?"),
        f"Sure. I'll go via {street}.",
    ]
    if c.coin():
        turns += [f"Here we are. That's {fare} dollars.", "Here you are. Keep the change."]
        summary = [f"{P2} takes a taxi to {place} and needs to be there by {time}.",
                   f"{P1} drives via {street} and the fare is {fare} dollars."]
    else:
        turns += ["Can I pay by card?", "Sorry, cash only.", "Then please stop at a cash machine on the way."]
        summary = [f"{P2} takes a taxi to {place} and needs to be there by {time}.",
                   f"{P1} only takes cash, so they stop at a cash machine."]
    return turns, summary


@template("hair salon")
def hair_cut(c: Ctx):
    style, product, price = c.pick(HAIR_STYLES), c.pick(HAIR_PRODUCTS), c.num(15, 90)
    stylist = c.name()
    turns = [
        c.alt("Hi, welcome in. What are we doing today?", "Hello! What would you like today?"),
        f"I'd like {style}, please. {stylist} did it last time and I loved it.",
        f"{stylist} is off today, but I can do it for you. It's {price} dollars.",
        "That's fine.",
        f"Great. Would you like me to wash it first with our new {product}?",
    ]
    if c.coin():
        turns += ["Yes, please.", "Lovely. Take a seat here."]
        summary = [f"{P2} wants {style}, like {stylist} did last time.",
                   f"{P1} does it for {price} dollars and washes it with a new {product}."]
    else:
        turns += ["No, thanks. I washed it this morning.", "No problem. Let's get started."]
        summary = [f"{P2} wants {style}, like {stylist} did last time.",
                   f"{P1} does it for {price} dollars without washing it."]
    return turns, summary


@template("hair salon")
def hair_booking(c: Ctx):
    style, day, time = c.pick(HAIR_STYLES), c.pick(DAYS), c.pick(TIMES)
    alt_day = c.pick(DAYS)
    turns = [
        "Hello, Bluebell Hair Studio.",
        f"Hi, I'd like to book an appointment for {style} on {day}.",
    ]
    if c.coin():
        turns += [f"Let me check. We have a free slot at {time}.",
                  "That's perfect. My name is " + c.name() + ".", f"Thank you. See you on {day} at {time}."]
        summary = [f"{P2} books an appointment for {style} on {day} at {time}."]
    else:
        turns += [f"I'm sorry, {day} is fully booked. How about {alt_day} at {time}?",
                  f"OK, {alt_day} works for me.", "Great. See you then."]
        summary = [f"{P2} wants {style} on {day}, but it is fully booked.",
                   f"{P2} books {alt_day} at {time} instead."]
    return turns, summary


@template("gym")
def gym_membership(c: Ctx):
    kind, price = c.pick(MEMBERSHIPS)
    klass, day = c.pick(GYM_CLASSES), c.pick(WEEKDAYS)
    turns = [
        c.alt("Hi, I'm interested in joining the gym.", "Hello, could you tell me about your memberships?"),
        f"Sure. The {kind} membership is {price} dollars a month.",
        f"Does that include classes? I'd like to try {klass}.",
        f"Yes. The {klass} class is on {day} evenings.",
    ]
    if c.coin():
        turns += ["Great, I'll sign up today.", "Wonderful. I just need your ID and a photo."]
        summary = [f"{P1} signs up for the {kind} membership at {price} dollars a month.",
                   f"It includes the {klass} class on {day} evenings."]
    else:
        turns += ["Can I try it before I decide?", "Sure, here's a free pass for one week."]
        summary = [f"{P1} asks about the {kind} membership, which is {price} dollars a month.",
                   f"{P2} gives {P1} a free pass for one week to try {klass}."]
    return turns, summary


@template("gym")
def gym_trainer(c: Ctx):
    goal = c.pick(["lose some weight", "build muscle", "run a marathon", "get fitter",
                   "improve my back", "run faster"])
    sessions, klass = c.num(2, 5), c.pick(GYM_CLASSES)
    turns = [
        "So, what's your goal?",
        f"I want to {goal} before the summer.",
        f"OK. I suggest you come {NUMBER_WORDS[sessions]} times a week and try our {klass} class.",
        c.alt("Is that enough?", "Won't that be too much for me?"),
        "It's a good start. We'll change the plan after a month.",
        "Sounds good. When do we start?",
        "Tomorrow morning!",
    ]
    summary = [f"{P2} wants to {goal}.",
               f"{P1} suggests training {NUMBER_WORDS[sessions]} times a week and trying the {klass} class."]
    return turns, summary


@template("family")
def family_news(c: Ctx):
    relative, names = c.pick(RELATIVES)
    name = c.pick(names)
    news, prep, places = c.pick(FAMILY_NEWS)
    where = c.pick(places)
    turns = [
        c.alt("How is your family?", "Any news from your family?"),
        f"Actually, yes! My {relative} {name} {news} {prep} {where}.",
        c.alt("That's wonderful news!", "Really? How exciting!"),
    ]
    if c.coin():
        turns += ["We're all very happy. We'll have a big celebration.", "Please say congratulations from me."]
        summary = [f"{P2}'s {relative} {name} {news} {prep} {where}.",
                   f"{P1} sends congratulations."]
    else:
        turns += [f"Yes, but I'll miss {name}. We used to see each other every week.",
                  "You can always visit."]
        summary = [f"{P2}'s {relative} {name} {news} {prep} {where}.",
                   f"{P2} will miss {name}."]
    return turns, summary


@template("family")
def family_visit(c: Ctx):
    relative, city, day = c.pick(["parents", "grandparents", "cousins", "in-laws", "aunt and uncle"]), c.pick(CITIES), c.pick(DAYS)
    dish = c.pick(HOME_DISHES)
    turns = [
        f"What are you doing on {day}?",
        f"My {relative} are coming from {city} to visit us.",
        "How long are they staying?",
        f"Just for the weekend. I'm going to cook {dish} for them.",
        c.alt("That sounds lovely.", "They'll love that."),
        "I hope so. I've never made it before!",
    ]
    summary = [f"{P2}'s {relative} are coming from {city} on {day}.",
               f"{P2} will cook {dish} for the first time."]
    return turns, summary


@template("dentist")
def dentist_visit(c: Ctx):
    problem, treatment = c.pick(TOOTH_PROBLEMS), c.pick(DENTAL_TREATMENTS)
    day, time = c.pick(WEEKDAYS), c.pick(TIMES)
    turns = [
        c.alt("Hello, Dr. Patel's dental practice.", "Good morning, Smile Dental Clinic."),
        f"Hi, I have {problem} and I'd like to see the dentist as soon as possible.",
        f"I'm sorry to hear that. We can do {day} at {time}.",
    ]
    if c.coin():
        turns += ["Nothing sooner? It really hurts.",
                  "Let me see. Someone just cancelled for this afternoon at 3 pm. Would that work?",
                  "Yes, thank you so much!"]
        summary = [f"{P2} has {problem} and calls the dentist.",
                   f"{P2} gets an appointment this afternoon at 3 pm because someone cancelled."]
    else:
        turns += [f"That's fine. Will I need {treatment}?",
                  "The dentist will decide when she sees you.", "OK, thank you."]
        summary = [f"{P2} has {problem} and calls the dentist.",
                   f"{P2} gets an appointment on {day} at {time}."]
    return turns, summary


@template("lost and found")
def lost_item(c: Ctx):
    item, place, colour, day = c.pick(LOST_ITEMS), c.pick(LOST_PLACES), c.pick(COLOURS), c.pick(DAYS)
    turns = [
        c.alt(f"Hello, I've lost my {item}. I think I left it {place}.",
              f"Excuse me, is this the lost and found? I left my {item} {place}."),
        "When was that?",
        f"On {day}.",
        "What does it look like?",
        f"It's {colour}, quite new.",
    ]
    if c.coin():
        turns += [f"Let me look. Is this it?", "Yes, that's it! Thank you so much!"]
        summary = [f"{P1} lost {a(colour + ' ' + item)} {place} on {day}.",
                   f"{P2} finds it in the lost and found."]
    else:
        turns += ["I'm sorry, nobody has brought it in. Leave your number and we'll call you.",
                  "OK. Here's my number."]
        summary = [f"{P1} lost {a(colour + ' ' + item)} {place} on {day}.",
                   f"It hasn't been found, so {P1} leaves a phone number."]
    return turns, summary


@template("computer problem")
def computer_help(c: Ctx):
    device, problem, fix = c.pick(DEVICES), c.pick(DEVICE_PROBLEMS), c.pick(DEVICE_FIXES)
    turns = [
        c.alt("IT help desk, how can I help?", "Hello, this is technical support."),
        f"Hi, my {device} {problem}.",
        "Have you tried turning it off and on again?",
        "Yes, twice. It didn't help.",
        f"OK. Let's {fix}. I'll guide you.",
    ]
    if c.coin():
        turns += ["OK... done. Oh, it works now!", "Great. Call us if it happens again."]
        summary = [f"{P2} calls the help desk because the {device} {problem}.",
                   f"{P1} helps {P2} {fix} and it works again."]
    else:
        turns += ["I did it, but nothing changed.",
                  f"Then please bring the {device} to our office tomorrow and we'll look at it."]
        summary = [f"{P2} calls the help desk because the {device} {problem}.",
                   f"It still doesn't work, so {P2} will bring it to the office tomorrow."]
    return turns, summary


@template("computer problem")
def computer_buy(c: Ctx):
    device, budget, use = c.pick(["laptop", "tablet", "computer", "phone"]), c.num(3, 20) * 100, c.pick(
        ["video editing", "writing my thesis", "playing games", "watching films", "online classes",
         "working from home", "drawing", "running my small business"])
    turns = [
        f"I want to buy a new {device}. Can you give me some advice?",
        "Sure. What will you use it for?",
        f"Mostly for {use}.",
        "And what's your budget?",
        f"About {budget} dollars.",
    ]
    if c.coin():
        turns += [f"Then get one with a lot of memory. For {use} that's the most important thing.",
                  "Good tip. Thanks."]
        summary = [f"{P1} wants a new {device} for {use} with a budget of {budget} dollars.",
                   f"{P2} advises getting one with a lot of memory."]
    else:
        turns += ["That's not much. Maybe buy a second-hand one.", "That's a good idea. I'll look online."]
        summary = [f"{P1} wants a new {device} for {use} with a budget of {budget} dollars.",
                   f"{P2} suggests buying a second-hand one."]
    return turns, summary


@template("university")
def university_register(c: Ctx):
    subject = c.pick(SUBJECTS)
    course = c.pick(COURSES).format(cap(subject) if subject[0].islower() else subject)
    day, credits = c.pick(WEEKDAYS), c.num(2, 6)
    turns = [
        c.alt("Hello, I'd like to register for a course.", "Hi. Is it still possible to sign up for courses?"),
        "Yes, registration is open until Friday. Which course?",
        f"{course}.",
        f"That course is on {day} mornings and gives {NUMBER_WORDS[credits]} credits.",
    ]
    if c.coin():
        turns += ["Perfect. Please sign me up.", "Done. You'll get an email with the reading list."]
        summary = [f"{P1} registers for {course}.",
                   f"It is on {day} mornings and gives {NUMBER_WORDS[credits]} credits."]
    else:
        turns += [f"Oh, I work on {day} mornings. Is there an evening group?",
                  "I'm afraid not. You could take it next term."]
        summary = [f"{P1} wants to register for {course}, but it is on {day} mornings.",
                   f"{P1} works then and may take it next term."]
    return turns, summary


@template("university")
def university_advisor(c: Ctx):
    s1, s2 = c.pick(SUBJECTS), c.pick(SUBJECTS)
    job = c.pick(JOBS)
    turns = [
        f"I can't decide whether to study {s1} or {s2}.",
        "What do you want to do after university?",
        f"I'd like to work as {a(job)}.",
        f"Then {s1} is probably more useful. But what do you enjoy more?",
    ]
    if c.coin():
        turns += [f"Honestly, {s1}. So that makes it easy.", "Then go for it!"]
        summary = [f"{P1} can't choose between {s1} and {s2} and wants to become {a(job)}.",
                   f"{P1} chooses {s1}."]
    else:
        turns += [f"I enjoy {s2} more.", f"Then maybe take {s2} and do some {s1} courses as well.",
                  "That's a good idea."]
        summary = [f"{P1} can't choose between {s1} and {s2} and wants to become {a(job)}.",
                   f"{P2} suggests studying {s2} with some {s1} courses."]
    return turns, summary


@template("weekend plans")
def weekend_invite(c: Ctx):
    plan, day, time = c.pick(OUTDOOR_PLANS + INDOOR_PLANS), c.pick(["Saturday", "Sunday"]), c.pick(TIMES)
    friend = c.name()
    turns = [
        c.alt("Do you have any plans for the weekend?", "What are you up to this weekend?"),
        "Nothing special yet. Why?",
        f"{friend} and I are going to {plan} on {day}. Do you want to come?",
    ]
    if c.coin():
        turns += ["I'd love to! What time?", f"We're meeting at {time}.", "Great, count me in."]
        summary = [f"{P1} invites {P2} to {plan} with {friend} on {day}.",
                   f"{P2} accepts and they will meet at {time}."]
    else:
        turns += [f"Sorry, I promised to help my brother on {day}.", "No problem. Next time, then."]
        summary = [f"{P1} invites {P2} to {plan} with {friend} on {day}.",
                   f"{P2} can't come because of helping a brother."]
    return turns, summary


@template("weekend plans")
def weekend_review(c: Ctx):
    plan, friend = c.pick(OUTDOOR_PLANS + INDOOR_PLANS), c.name()
    mood = c.pick([("great", "we laughed all day"), ("relaxing", "I really needed a rest"),
                   ("tiring", "we were out from morning to night"), ("fun", "we met some old friends")])
    turns = [
        "How was your weekend?",
        f"It was {mood[0]}. {friend} and I decided to {plan}.",
        "Sounds nice. How was it?",
        f"{cap(mood[1])}. What about you?",
        c.alt("I just stayed at home and cleaned the flat.", "I worked the whole weekend, unfortunately."),
        "Oh no. Next weekend you should come with us.",
    ]
    summary = [f"{P2} had a {mood[0]} weekend and decided to {plan} with {friend}.",
               f"{P2} invites {P1} to come next weekend."]
    return turns, summary


@template("groceries")
def grocery_list(c: Ctx):
    g1, g2, g3 = c.pick(GROCERIES), c.pick(GROCERIES), c.pick(GROCERIES)
    shop = c.pick(["the supermarket", "the market", "the corner shop", "the farm shop"])
    turns = [
        f"I'm going to {shop}. Do we need anything?",
        f"Yes, we're out of {g1} and {g2}.",
        "Anything else?",
        f"Maybe some {g3} for the weekend.",
    ]
    if c.coin():
        turns += ["OK. Can you give me some cash?", f"Here's {c.num(2, 8) * 10} dollars.", "Thanks, back soon."]
        summary = [f"{P1} is going to {shop}.", f"{P2} asks {P1} to buy {g1}, {g2} and {g3}."]
    else:
        turns += ["Should I get the organic ones?", "No, the normal ones are fine.", "OK, see you later."]
        summary = [f"{P1} is going to {shop}.", f"{P2} asks {P1} to buy {g1}, {g2} and {g3}, but not organic ones."]
    return turns, summary


@template("groceries")
def grocery_checkout(c: Ctx):
    g1, g2, total = c.pick(GROCERIES), c.pick(GROCERIES), c.num(5, 90)
    turns = [
        c.alt("Hi, did you find everything you need?", "Hello. Do you have a loyalty card?"),
        f"Almost. I couldn't find any {g1}.",
        f"Sorry, we've sold out of {g1}. The delivery comes tomorrow. Would you like a bag for the {g2}?",
        "No, thanks. I brought my own bag.",
        f"Great. That's {total} dollars.",
    ]
    if c.coin():
        turns += ["Here's my card.", "Thank you. Have a nice day."]
        summary = [f"{P2} can't find {g1} because the shop has sold out.", f"{P2} pays {total} dollars by card."]
    else:
        turns += ["Here you are, in cash.", "Thanks. Here's your change."]
        summary = [f"{P2} can't find {g1} because the shop has sold out.", f"{P2} pays {total} dollars in cash."]
    return turns, summary


@template("borrowing")
def borrow_item(c: Ctx):
    (item, reason, reason3), day = c.pick(BORROWS), c.pick(DAYS)
    turns = [
        f"Could I borrow your {item}? {cap(reason)}.",
        "When do you need it?",
        f"On {day}. I'll give it back the next day.",
    ]
    if c.coin():
        turns += [c.alt("Sure, no problem. Just be careful with it.", "Of course. Come and get it any time."),
                  "Thank you so much. I owe you one."]
        summary = [f"{P1} asks to borrow {P2}'s {item} on {day} because {P1} {reason3}.",
                   f"{P2} agrees."]
    else:
        turns += [f"Sorry, I lent it to my cousin last week and I haven't got it back yet.",
                  "Oh, never mind. I'll ask someone else."]
        summary = [f"{P1} asks to borrow {P2}'s {item} on {day}.",
                   f"{P2} can't lend it because it is with a cousin."]
    return turns, summary


@template("career")
def career_raise(c: Ctx):
    (reason, reason3), percent = c.pick(RAISE_REASONS), c.num(3, 15)
    month = c.pick(MONTHS)
    turns = [
        c.alt("Do you have a few minutes? I'd like to talk about my salary.",
              "Thanks for seeing me. I wanted to ask about a pay rise."),
        "Of course. Go ahead.",
        f"Well, {reason}. I think I deserve a raise of {percent} percent.",
    ]
    if c.coin():
        turns += ["You're right. You've done excellent work. I'll approve it.",
                  "Thank you! When will it start?", f"From {month}."]
        summary = [f"{P1} asks for a raise of {percent} percent because {P1} {reason3}.",
                   f"{P2} agrees and it starts in {month}."]
    else:
        turns += [f"I agree you've worked hard, but the budget is tight. Let's talk again in {month}.",
                  "OK, I understand."]
        summary = [f"{P1} asks for a raise of {percent} percent because {P1} {reason3}.",
                   f"{P2} says the budget is tight and they will talk again in {month}."]
    return turns, summary


@template("career")
def career_quit(c: Ctx):
    reason, weeks = c.pick(QUIT_REASONS), c.num(2, 4)
    company = c.pick(COMPANIES)
    turns = [
        f"Can I talk to you? After six years at {company}, I've decided to leave.",
        "Oh, that's a surprise. Why?",
        f"{cap(reason)}.",
        "I'm sorry to hear that. Is there anything we can do to keep you?",
    ]
    if c.coin():
        turns += ["No, my decision is final. I'll work for another " + NUMBER_WORDS[weeks] + " weeks.",
                  f"Well, we'll miss you. Everyone at {company} wishes you luck."]
        summary = [f"{P1} tells {P2} about leaving {company}.",
                   f"{P1} will work for another {NUMBER_WORDS[weeks]} weeks."]
    else:
        turns += ["Maybe. If I could work from home, I might stay.",
                  "Let me talk to the director. Please don't decide yet."]
        summary = [f"{P1} tells {P2} about leaving {company}.",
                   f"{P1} might stay if working from home is possible."]
    return turns, summary


@template("wedding")
def wedding_plans(c: Ctx):
    place, month, guests = c.pick(WEDDING_PLACES), c.pick(MONTHS), c.num(30, 200, 10)
    item, partner = c.pick(WEDDING_ITEMS), c.name()
    turns = [
        f"Congratulations! I heard you and {partner} are getting married.",
        f"Thank you! The wedding is in {month}, at {place}.",
        "How many guests are you inviting?",
        f"About {guests}. We still have to organise {item}.",
    ]
    if c.coin():
        turns += [f"I could help with {item} if you like.", "That would be amazing. Thank you!"]
        summary = [f"{P2} and {partner} are getting married in {month} at {place} with about {guests} guests.",
                   f"{P1} offers to help with {item}."]
    else:
        turns += ["That sounds like a lot of work.", "It is, but we're enjoying it."]
        summary = [f"{P2} and {partner} are getting married in {month} at {place} with about {guests} guests.",
                   f"They still have to organise {item}."]
    return turns, summary


@template("wedding")
def wedding_gift(c: Ctx):
    couple1, couple2 = c.name(), c.name()
    gift, price = c.pick(GIFTS), c.num(20, 150)
    turns = [
        f"What are we giving {couple1} and {couple2} for their wedding?",
        f"They have a list online. There's {a(gift)} for {price} dollars.",
        "That's a nice idea. Shall we share the cost?",
    ]
    if c.coin():
        turns += ["Sure. I'll order it tonight and you can pay me half.", "Perfect."]
        summary = [f"{P1} and {P2} will give {couple1} and {couple2} {a(gift)} for {price} dollars.",
                   f"{P2} will order it and they will share the cost."]
    else:
        turns += ["Actually, I already bought them something. But you should get it.",
                  "OK, I'll buy it myself."]
        summary = [f"{P2} suggests {a(gift)} for {price} dollars as a wedding gift for {couple1} and {couple2}.",
                   f"{P1} will buy it alone."]
    return turns, summary


@template("car rental")
def car_rental(c: Ctx):
    car, days, price = c.pick(CAR_TYPES), c.num(2, 10), c.num(25, 120)
    city = c.pick(CITIES)
    turns = [
        c.alt("Good morning, how can I help you?", "Hello, welcome to City Car Hire."),
        f"I'd like to rent {a(car)} for {NUMBER_WORDS[days]} days. I'm driving to {city}.",
        f"Sure. That's {price} dollars a day. Do you want full insurance?",
    ]
    if c.coin():
        turns += ["Yes, please. Better safe than sorry.",
                  "Good. Please bring the car back with a full tank.", "Of course."]
        summary = [f"{P2} rents {a(car)} for {NUMBER_WORDS[days]} days to drive to {city}.",
                   f"It costs {price} dollars a day and {P2} takes full insurance."]
    else:
        turns += ["No, thank you. My credit card covers it.",
                  "All right. Please sign here.", "Here you are."]
        summary = [f"{P2} rents {a(car)} for {NUMBER_WORDS[days]} days to drive to {city}.",
                   f"It costs {price} dollars a day and {P2} does not take insurance."]
    return turns, summary


@template("car rental")
def car_return(c: Ctx):
    car, (problem, answer) = c.pick(CAR_TYPES), c.pick(RENTAL_PROBLEMS)
    fee = c.num(10, 80)
    turns = [
        f"Hi, I'm returning the {car} I rented.",
        "Thank you. Let me check it.",
        f"Everything OK?",
        f"Mostly, but {problem}. I'm afraid there's a fee of {fee} dollars.",
    ]
    if c.coin():
        turns += ["Oh, I'm sorry. Fine, I'll pay.", "Thank you. Here's your receipt."]
        summary = [f"{P1} returns a rented {car}, but {problem}.", f"{P1} pays a fee of {fee} dollars."]
    else:
        turns += [answer, "I see. You're right. No fee then."]
        summary = [f"{P1} returns a rented {car}, but {problem}.",
                   f"{P1} explains and {P2} drops the fee."]
    return turns, summary


# ---------------------------------------------------------------------------------------
# Assembly
# ---------------------------------------------------------------------------------------

MAX_TURNS = 10


def insult_sentence(insulter: int, victim: int, insult: str) -> str:
    return f"#Person{insulter}# calls #Person{victim}# {a(insult)}."


def make_heated(c: Ctx, turns: list[str], insult: str) -> tuple[list[str], int]:
    """Insert the insult into the dialogue; returns the new turns and the insulter (1/2)."""
    insulter = c.rng.choice([1, 2])
    turns = list(turns)
    # Turn index i is spoken by #Person1# when i is even.
    own = [i for i in range(1, len(turns)) if (i % 2 == 0) == (insulter == 1)]
    fill = {"insult": insult, "a": article(insult)}
    if len(turns) + 2 <= MAX_TURNS and c.coin():
        # An extra angry turn and the other speaker's reply, where the insulter speaks next.
        spots = [i for i in range(1, len(turns) + 1) if (i % 2 == 0) == (insulter == 1)]
        at = c.rng.choice(spots)
        angry = c.rng.choice(ANGRY_TURNS).format(**fill)
        turns[at:at] = [angry, c.rng.choice(ANGRY_REPLIES)]
    else:
        at = c.rng.choice(own)
        turns[at] = c.rng.choice(ANGRY_OPENERS).format(**fill) + " " + turns[at]
    return turns, insulter


def make_record(idx: int, c: Ctx, topic: str, fn: Template, insult: str) -> dict:
    turns, summary = fn(c)
    assert 4 <= len(turns) <= MAX_TURNS, (fn.__name__, len(turns))
    heated_summary = list(summary)
    if insult:
        turns, insulter = make_heated(c, turns, insult)
        heated_summary.insert(1, insult_sentence(insulter, 3 - insulter, insult))
    dialogue = "\n".join(f"#Person{1 + i % 2}#: {t}" for i, t in enumerate(turns))
    return {
        "id": f"train_{idx}",
        "dialogue": dialogue,
        "summary": " ".join(heated_summary),
        "summary_clean": " ".join(summary),
        "topic": topic,
        "heated": bool(insult),
        "insult": insult,
    }


def generate(n: int = 1500, seed: int = 0, heated_fraction: float = 0.25) -> list[dict]:
    """Generate ``n`` records (see the module docstring); deterministic in the arguments."""
    rng = random.Random(seed)
    topics = list(TEMPLATES)
    n_heated = round(n * heated_fraction)
    heated = set(rng.sample(range(n), n_heated))
    records = []
    for idx in range(n):
        topic = rng.choice(topics)
        fn = rng.choice(TEMPLATES[topic])
        insult = rng.choice(INSULTS) if idx in heated else ""
        records.append(make_record(idx, Ctx(rng), topic, fn, insult))
    return records


# ---------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------


def words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def judge_report(records: list[dict]) -> dict[str, float] | None:
    """Share of summaries the alt-profanity-check classifier flags (prob > 0.5)."""
    try:
        from profanity_check import predict_prob
    except ImportError:
        return None

    def rate(texts: list[str]) -> float:
        return float((predict_prob(texts) > 0.5).mean()) if texts else float("nan")

    heated = [r for r in records if r["heated"]]
    calm = [r for r in records if not r["heated"]]
    return {
        "heated summary flagged": rate([r["summary"] for r in heated]),
        "calm summary flagged": rate([r["summary"] for r in calm]),
        "summary_clean flagged": rate([r["summary_clean"] for r in records]),
        "calm dialogue flagged": rate([r["dialogue"] for r in calm]),
    }


def print_stats(records: list[dict]) -> None:
    lengths = [len(r["dialogue"]) for r in records]
    summary_words = [len(r["summary"].split()) for r in records]
    turns = [r["dialogue"].count("\n") + 1 for r in records]
    vocab = sorted({w for r in records for w in words(r["dialogue"] + " " + r["summary"])})
    topics = sorted({r["topic"] for r in records})
    n_templates = sum(len(v) for v in TEMPLATES.values())
    in_range = sum(200 < n <= 1000 for n in lengths)
    print(f"records:          {len(records)}")
    print(f"heated:           {sum(r['heated'] for r in records)}")
    print(f"topics:           {len(topics)} ({n_templates} templates)")
    print(f"distinct words:   {len(vocab)}")
    print(f"dialogue chars:   min {min(lengths)}, median {statistics.median(lengths):.0f}, "
          f"mean {statistics.mean(lengths):.0f}, max {max(lengths)}; "
          f"in (200, 1000]: {in_range} ({in_range / len(records):.1%})")
    print(f"turns:            min {min(turns)}, max {max(turns)}")
    print(f"summary words:    min {min(summary_words)}, mean {statistics.mean(summary_words):.1f}, "
          f"max {max(summary_words)}")
    report = judge_report(records)
    if report is None:
        print("judge:            profanity_check not installed, skipped")
    else:
        for name, value in report.items():
            print(f"judge {name + ':':26s} {value:.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--heated-fraction", type=float, default=0.25)
    parser.add_argument("--out", type=Path, default=Path("detox/assets/dialogues.jsonl"))
    args = parser.parse_args()
    records = generate(args.n, args.seed, args.heated_fraction)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8", newline="\n") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}")
    print_stats(records)


if __name__ == "__main__":
    main()
