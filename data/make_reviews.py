"""Writes data/reviews.csv: the demo job's product reviews.

The sentences were written for batchrun; this script combines them into 360
reviews (seeded, so the file is reproducible) in six languages with a product,
a star rating and a date. Run: python data/make_reviews.py
"""

from __future__ import annotations

import csv
import random
from datetime import date, timedelta
from pathlib import Path

PRODUCTS = [
    ("Aeroflow 3 wireless earbuds", "audio"),
    ("Kettlemate 1.7 L electric kettle", "kitchen"),
    ("TrailLite 45 hiking backpack", "outdoor"),
    ("Lumen desk lamp with USB-C", "home"),
    ("Stridewave running shoes", "footwear"),
    ("PixelPro 27-inch monitor", "electronics"),
    ("BrewBuddy pour-over set", "kitchen"),
    ("NimbusSoft memory foam pillow", "home"),
    ("VoltGo 20,000 mAh power bank", "electronics"),
    ("Cascade cotton bed sheets", "home"),
]

# (language, positive sentences, negative sentences, neutral sentences, delivery/price asides)
TEXT = {
    "en": (
        [
            "Works exactly as described and the battery easily lasts a full day.",
            "Really solid build quality, it feels like it will last for years.",
            "Set-up took two minutes and it has worked flawlessly since.",
            "Great value for the price, I'd buy it again without thinking.",
            "My wife stole mine, so I ordered a second one. That says it all.",
        ],
        [
            "Stopped working after three weeks and support never replied.",
            "The description promised much more than this delivers.",
            "Cheap plastic, one of the clips snapped on the first day.",
            "Way too loud and the smell of the material would not go away.",
            "Returned it. The colour looked nothing like the photos.",
        ],
        [
            "It's fine. Does the job, nothing special.",
            "Decent, though the instructions could be clearer.",
            "Okay for occasional use, I wouldn't rely on it every day.",
        ],
        [
            "Arrived a day early, well packed.",
            "Shipping took almost two weeks.",
            "A bit expensive compared to similar products.",
            "Bought it on sale, worth it at that price.",
        ],
    ),
    "es": (
        [
            "Funciona perfectamente y la batería dura todo el día.",
            "Muy buena calidad, se nota que está bien hecho.",
            "Lo recomiendo, es justo lo que buscaba.",
        ],
        [
            "Dejó de funcionar al mes y el vendedor no responde.",
            "La calidad es muy mala para lo que cuesta.",
            "No se parece en nada a las fotos, lo he devuelto.",
        ],
        ["Cumple su función, sin más.", "Está bien, aunque esperaba un poco más."],
        ["Llegó antes de lo previsto.", "El envío tardó demasiado.", "Un poco caro, la verdad."],
    ),
    "de": (
        [
            "Funktioniert einwandfrei, ich bin sehr zufrieden.",
            "Hervorragende Verarbeitung, fühlt sich hochwertig an.",
            "Klare Kaufempfehlung, genau wie beschrieben.",
        ],
        [
            "Nach zwei Wochen kaputt, der Kundendienst reagiert nicht.",
            "Billiges Material, das Geld nicht wert.",
            "Leider völlig anders als auf den Bildern, geht zurück.",
        ],
        ["Erfüllt seinen Zweck, mehr aber auch nicht.", "Ganz okay, die Anleitung ist etwas knapp."],
        ["Die Lieferung war schnell und gut verpackt.", "Der Versand hat ewig gedauert.", "Für den Preis in Ordnung."],
    ),
    "fr": (
        [
            "Fonctionne parfaitement, je suis ravie de mon achat.",
            "Très bonne qualité de fabrication, rien à redire.",
            "Exactement ce que je cherchais, je recommande.",
        ],
        [
            "Tombé en panne au bout de trois semaines, très déçu.",
            "Qualité médiocre pour ce prix, je ne rachèterai pas.",
            "Rien à voir avec la description, retourné.",
        ],
        ["Correct, sans plus.", "Fait le travail, mais la notice est incompréhensible."],
        ["Livraison rapide et soignée.", "La livraison a pris deux semaines.", "Un peu cher quand même."],
    ),
    "it": (
        ["Funziona benissimo, lo consiglio a tutti.", "Ottima qualità, si vede che è fatto bene."],
        ["Si è rotto dopo pochi giorni, una delusione.", "Materiali scadenti, non vale il prezzo."],
        ["Nella media, fa quello che deve."],
        ["Spedizione veloce.", "Consegna in ritardo di una settimana."],
    ),
    "pt": (
        ["Funciona muito bem, superou as minhas expectativas.", "Ótima qualidade pelo preço, recomendo."],
        ["Parou de funcionar depois de um mês, péssimo.", "Muito diferente do anunciado, vou devolver."],
        ["É razoável, nada de especial."],
        ["Chegou antes do prazo.", "A entrega demorou muito."],
    ),
}
LANG_WEIGHTS = {"en": 45, "es": 15, "de": 14, "fr": 12, "it": 7, "pt": 7}


def review(rng: random.Random, lang: str) -> tuple[str, int]:
    pos, neg, neu, aside = TEXT[lang]
    mood = rng.choices(["pos", "neg", "neu", "mixed"], weights=[45, 30, 15, 10])[0]
    if mood == "pos":
        parts, stars = rng.sample(pos, k=min(2, len(pos))), rng.choice([4, 5, 5])
    elif mood == "neg":
        parts, stars = rng.sample(neg, k=min(2, len(neg))), rng.choice([1, 1, 2])
    elif mood == "neu":
        parts, stars = [rng.choice(neu)], 3
    else:
        parts, stars = [rng.choice(pos), rng.choice(neg)], rng.choice([2, 3, 4])
    if rng.random() < 0.6:
        parts.insert(rng.randrange(len(parts) + 1), rng.choice(aside))
    return " ".join(parts), stars


def main() -> None:
    rng = random.Random(20261122)
    langs = list(LANG_WEIGHTS)
    out = Path(__file__).with_name("reviews.csv")
    start = date(2026, 1, 1)
    with out.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["review_id", "product", "category", "stars", "date", "text"])
        for i in range(360):
            lang = rng.choices(langs, weights=[LANG_WEIGHTS[x] for x in langs])[0]
            product, category = rng.choice(PRODUCTS)
            text, stars = review(rng, lang)
            day = start + timedelta(days=rng.randrange(300))
            w.writerow([f"R{i + 1:05d}", product, category, stars, day.isoformat(), text])


if __name__ == "__main__":
    main()
