"""Benchmark `llamantino clean` against a plain single-process cleaner.

    python benchmarks/bench_clean.py                 # two ~20 MB shards: speed, agreement, time shares
    python benchmarks/bench_clean.py --shard second  # one of them
    python benchmarks/bench_clean.py --mb 5          # smaller shards
    python benchmarks/bench_clean.py --langid        # compare the language detectors

The shards are generated here, deterministically: Italian web pages built from varied
sentences, wrapped in the noise of real pages (menus, cookie banners, javascript
warnings, titles without punctuation), plus pages in other languages, pages with bad
words, fragments, code and oversized pages. The second shard has other lengths (from
one-sentence paragraphs to long ones) and more noise (more noise lines per page, more
pages of noise, fragments and code). The baseline applies the same rules in the most
direct way: one document after another, bad words through one big regular expression
(as C4 did), langdetect on every document that reaches the language rule.

After the timings, the CPU time of each step of `llamantino clean` (gzip, JSON decoding,
line rules, language identification, JSON encoding, inter-process transfer) is measured
one step at a time in one process over the same shard, with its share of the total: a
regression shows where it comes from. The machine's load average is printed before and
after (other jobs on the cores slow the parallel run more than the one-process baseline).
Each shard ends with `RESULT {...}` lines (documents/s and CPU seconds, ours and the
baseline's) for a summary table over every benchmark.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

# ---------------------------------------------------------------------------------------
# Text to build pages from

CITIES = ["Torino", "Bari", "Padova", "Lecce", "Bergamo", "Perugia", "Trento", "Sassari", "Ancona", "Cosenza",
          "Ferrara", "Siena", "Udine", "Matera", "Pescara", "Verona", "Ravenna", "Trapani", "Como", "Arezzo"]
SAINTS = ["Francesco", "Giovanni", "Michele", "Rocco", "Martino", "Nicola", "Antonio", "Lorenzo"]
SUBJECTS = [
    "Il sindaco di {city}", "La giunta regionale", "Il nuovo assessore alla cultura",
    "Un gruppo di ricercatori dell'Università di {city}", "L'associazione dei commercianti",
    "La squadra di casa", "Il museo civico di {city}", "Una giovane imprenditrice di {city}",
    "Il consiglio comunale", "La protezione civile", "Il direttore del festival",
    "Gli studenti del liceo scientifico", "Il presidente della provincia", "La biblioteca di quartiere",
    "Una cooperativa agricola della zona", "Il centro sportivo comunale", "La direzione dell'ospedale",
    "Il comitato di quartiere", "La camera di commercio di {city}", "Un noto chef di {city}",
    "La compagnia teatrale del paese", "Il parco naturale", "L'azienda dei trasporti",
]
ACTIONS = [
    "ha presentato ieri un progetto per {obj}", "ha annunciato un piano triennale per {obj}",
    "ha chiesto alla regione nuovi fondi per {obj}", "ha discusso a lungo di {obj}",
    "sta lavorando da mesi a {obj}", "ha promosso una raccolta firme per {obj}",
    "ha illustrato ai cittadini i dettagli del progetto per {obj}", "ha raccolto numerose proposte per {obj}",
    "ha ottenuto un finanziamento europeo per {obj}", "ha rinviato a settembre la decisione su {obj}",
]
OBJECTS = [
    "la riqualificazione del centro storico", "la nuova pista ciclabile lungo il fiume",
    "il restauro della chiesa di San {saint}", "la mensa delle scuole elementari",
    "il trasporto pubblico nelle frazioni", "la tutela del bosco comunale", "l'apertura di un nuovo asilo nido",
    "la raccolta differenziata porta a porta", "la manutenzione delle strade di campagna",
    "il recupero dell'ex caserma", "la valorizzazione dei prodotti tipici",
    "la sicurezza degli attraversamenti pedonali",
    "la digitalizzazione degli archivi storici", "un centro estivo per ragazzi", "la pulizia delle spiagge",
]
COMPLEMENTS = [
    "", " nel corso di un incontro pubblico", ", suscitando reazioni contrastanti",
    " davanti a numerosi cittadini", ", come previsto dal programma elettorale",
    " in collaborazione con le scuole del territorio", " dopo un lungo confronto con i residenti",
    ", ma i tempi restano incerti", " con il sostegno di alcune aziende locali",
]
FOLLOWUPS = [
    "Secondo i tecnici, i lavori potrebbero cominciare già entro la fine dell'anno.",
    "Non tutti però sono d'accordo e l'opposizione parla di spese eccessive.",
    "I residenti chiedono da tempo un intervento deciso su questo problema.",
    "Il progetto prevede anche una fase di ascolto con le associazioni del territorio.",
    "Le risorse arriveranno in parte dal bilancio comunale e in parte da fondi regionali.",
    "Sul sito del comune è possibile consultare tutti i documenti relativi all'iniziativa.",
    "La prossima riunione è prevista per la fine del mese, nella sala consiliare.",
    "Molti commercianti sperano che l'iniziativa porti nuovi visitatori in centro.",
    "Chi desidera partecipare può iscriversi gratuitamente presso la segreteria.",
    "Negli anni passati iniziative simili hanno dato risultati incoraggianti.",
    "Gli organizzatori ringraziano i volontari che hanno reso possibile l'evento.",
    "Il calendario completo degli appuntamenti sarà pubblicato nei prossimi giorni.",
]
GENERAL_IT = [
    "Il risotto va mescolato spesso e servito appena tolto dal fuoco.",
    "In autunno i boschi dell'Appennino si colorano di giallo e di rosso.",
    "La lievitazione lenta rende l'impasto della pizza più leggero e digeribile.",
    "Molti turisti scelgono la bicicletta per visitare le colline del Chianti.",
    "Il nuovo romanzo racconta la storia di tre sorelle cresciute in un paese di mare.",
    "Per coltivare il basilico sul balcone servono sole, acqua e un terriccio leggero.",
    "La partita si è decisa negli ultimi minuti con un calcio di rigore.",
    "Gli esperti consigliano di camminare almeno trenta minuti al giorno.",
    "La mostra resterà aperta fino a gennaio, dal martedì alla domenica.",
    "Il treno regionale collega la città al capoluogo in meno di un'ora.",
    "Durante l'inverno è importante controllare la pressione degli pneumatici.",
    "Le api svolgono un ruolo fondamentale nell'impollinazione delle piante coltivate.",
    "Il castello medievale domina la valle da una collina ricoperta di ulivi.",
    "Il concerto di beneficenza ha raccolto fondi per la ricerca sulle malattie rare.",
    "Ogni anno migliaia di pellegrini percorrono a piedi la via Francigena.",
    "La ricetta tradizionale prevede pomodori maturi, aglio, olio e basilico fresco.",
    "I ragazzi della scuola media hanno piantato cento alberi nel parco cittadino.",
    "Il sentiero è ben segnalato, ma nei tratti più ripidi servono scarpe adatte.",
    "Le previsioni indicano un fine settimana soleggiato su gran parte della penisola.",
    "La nuova legge entrerà in vigore dal primo gennaio dell'anno prossimo.",
    "Perché i prezzi dell'energia sono aumentati così tanto negli ultimi mesi?",
    "Chi ha visitato il borgo almeno una volta sa quanto sia difficile dimenticarlo!",
    "Il vino di queste colline viene esportato soprattutto in Germania e negli Stati Uniti.",
    "La biblioteca offre anche corsi gratuiti di informatica per gli anziani.",
    "Secondo l'ultimo censimento, la popolazione del paese è in lieve aumento.",
    "Il festival del cinema ha premiato un documentario sulla vita dei pescatori.",
    "La sagra della castagna attira ogni anno visitatori da tutta la regione.",
    "Per evitare code conviene acquistare il biglietto online con qualche giorno di anticipo.",
    "Gli archeologi hanno riportato alla luce i resti di una villa romana.",
    "Il mercato contadino si tiene ogni sabato mattina in piazza del municipio.",
]
FOREIGN = {
    "en": [
        "The city council approved a new plan for the historic centre on Tuesday evening.",
        "Researchers at the university have published a study on coastal erosion.",
        "Tickets for the summer festival went on sale this morning and sold out within hours.",
        "The recipe calls for ripe tomatoes, garlic, olive oil and a handful of fresh basil.",
        "Local farmers say the dry spring has reduced this year's harvest by a third.",
        "Visitors can reach the castle by a short walk from the railway station.",
        "The museum will stay open late on Fridays throughout the summer.",
        "Experts recommend walking for at least thirty minutes every day.",
        "The new bridge is expected to cut travel times between the two towns.",
        "Volunteers cleaned up the beach after the storm washed up tons of plastic.",
        "Why have energy prices risen so sharply over the last few months?",
        "The school has launched a free coding course for teenagers.",
    ],
    "es": [
        "El ayuntamiento aprobó ayer un nuevo plan para rehabilitar el casco antiguo.",
        "Los investigadores de la universidad han publicado un estudio sobre la erosión de la costa.",
        "Las entradas para el festival de verano se agotaron en pocas horas.",
        "La receta tradicional lleva tomates maduros, ajo, aceite de oliva y pan del día anterior.",
        "Los agricultores de la zona aseguran que la sequía ha reducido la cosecha.",
        "El museo permanecerá abierto hasta tarde todos los viernes del verano.",
        "Los expertos recomiendan caminar al menos treinta minutos al día.",
        "El nuevo puente reducirá el tiempo de viaje entre los dos pueblos.",
        "Cientos de voluntarios limpiaron la playa después del temporal.",
        "¿Por qué han subido tanto los precios de la energía en los últimos meses?",
        "La escuela ha puesto en marcha un curso gratuito de programación para jóvenes.",
        "El castillo se encuentra a pocos minutos a pie de la estación de tren.",
    ],
    "fr": [
        "Le conseil municipal a approuvé hier soir un nouveau plan pour le centre historique.",
        "Des chercheurs de l'université ont publié une étude sur l'érosion du littoral.",
        "Les billets pour le festival d'été se sont vendus en quelques heures.",
        "La recette demande des tomates bien mûres, de l'ail, de l'huile d'olive et du basilic.",
        "Les agriculteurs de la région affirment que la sécheresse a réduit la récolte.",
        "Le musée restera ouvert tard tous les vendredis pendant l'été.",
        "Les spécialistes conseillent de marcher au moins trente minutes par jour.",
        "Le nouveau pont devrait réduire le temps de trajet entre les deux villages.",
        "Des centaines de bénévoles ont nettoyé la plage après la tempête.",
        "Pourquoi les prix de l'énergie ont-ils autant augmenté ces derniers mois ?",
        "L'école a lancé un cours gratuit de programmation pour les adolescents.",
        "On rejoint le château à pied en quelques minutes depuis la gare.",
    ],
    "pt": [
        "A câmara municipal aprovou ontem um novo plano para o centro histórico.",
        "Investigadores da universidade publicaram um estudo sobre a erosão costeira.",
        "Os bilhetes para o festival de verão esgotaram em poucas horas.",
        "A receita leva tomates maduros, alho, azeite e um punhado de manjericão fresco.",
        "Os agricultores da região dizem que a seca reduziu a colheita deste ano.",
        "O museu vai ficar aberto até mais tarde todas as sextas-feiras do verão.",
        "Os especialistas recomendam caminhar pelo menos trinta minutos por dia.",
        "A nova ponte deverá reduzir o tempo de viagem entre as duas vilas.",
        "Centenas de voluntários limparam a praia depois da tempestade.",
        "Por que razão os preços da energia subiram tanto nos últimos meses?",
        "A escola lançou um curso gratuito de programação para adolescentes.",
        "O castelo fica a poucos minutos a pé da estação de comboios.",
    ],
    "de": [
        "Der Stadtrat hat gestern Abend einen neuen Plan für die Altstadt beschlossen.",
        "Forscher der Universität haben eine Studie über die Erosion der Küste veröffentlicht.",
        "Die Karten für das Sommerfestival waren innerhalb weniger Stunden ausverkauft.",
        "Für das Rezept braucht man reife Tomaten, Knoblauch, Olivenöl und frisches Basilikum.",
        "Die Landwirte der Region sagen, dass die Trockenheit die Ernte verringert hat.",
        "Das Museum ist im Sommer jeden Freitag bis spät abends geöffnet.",
        "Experten empfehlen, jeden Tag mindestens dreißig Minuten zu Fuß zu gehen.",
        "Die neue Brücke soll die Fahrzeit zwischen den beiden Orten verkürzen.",
        "Hunderte Freiwillige haben nach dem Sturm den Strand gereinigt.",
        "Warum sind die Energiepreise in den letzten Monaten so stark gestiegen?",
        "Die Schule bietet einen kostenlosen Programmierkurs für Jugendliche an.",
        "Vom Bahnhof aus erreicht man die Burg in wenigen Minuten zu Fuß.",
    ],
    "ca": [
        "L'ajuntament va aprovar ahir un nou pla per rehabilitar el nucli antic.",
        "Investigadors de la universitat han publicat un estudi sobre l'erosió de la costa.",
        "Les entrades per al festival d'estiu es van esgotar en poques hores.",
        "La recepta porta tomàquets madurs, all, oli d'oliva i pa del dia anterior.",
        "Els pagesos de la zona asseguren que la sequera ha reduït la collita.",
        "El museu romandrà obert fins tard tots els divendres de l'estiu.",
        "Els experts recomanen caminar com a mínim trenta minuts cada dia.",
        "El nou pont reduirà el temps de viatge entre els dos pobles.",
        "Centenars de voluntaris van netejar la platja després del temporal.",
        "Per què han pujat tant els preus de l'energia els darrers mesos?",
        "L'escola ha engegat un curs gratuït de programació per a joves.",
        "El castell és a pocs minuts a peu de l'estació de tren.",
    ],
    "ro": [
        "Consiliul local a aprobat aseară un nou plan pentru centrul istoric.",
        "Cercetătorii universității au publicat un studiu despre eroziunea coastei.",
        "Biletele pentru festivalul de vară s-au vândut în câteva ore.",
        "Rețeta cere roșii coapte, usturoi, ulei de măsline și busuioc proaspăt.",
        "Fermierii din regiune spun că seceta a redus recolta din acest an.",
        "Muzeul va rămâne deschis până târziu în fiecare vineri din timpul verii.",
        "Specialiștii recomandă cel puțin treizeci de minute de mers pe jos pe zi.",
        "Noul pod ar trebui să scurteze timpul de călătorie dintre cele două orașe.",
        "Sute de voluntari au curățat plaja după furtună.",
        "De ce au crescut atât de mult prețurile la energie în ultimele luni?",
        "Școala a lansat un curs gratuit de programare pentru adolescenți.",
        "Castelul se află la câteva minute de mers pe jos de gară.",
    ],
}
NOISE = [
    "Home | Chi siamo | Servizi | Blog | Contatti", "Home > Notizie > Cronaca", "Leggi tutto",
    "Condividi su Facebook Twitter WhatsApp", "Pubblicato il 12 marzo 2020", "Commenti (3)",
    "Iscriviti alla newsletter", "Tags: eventi, cultura, territorio", "Articoli correlati",
    "Copyright 2021 Tutti i diritti riservati - P.IVA 01234567890", "Prezzo: 29,90 €", "Scopri di più",
    "Questo sito utilizza cookie tecnici e di terze parti. Continuando la navigazione accetti l'uso dei cookie.",
    "This website uses cookies to ensure you get the best experience on our website.",
    "Per visualizzare correttamente il sito è necessario abilitare JavaScript.",
    "JavaScript must be enabled to view this page.", "Accedi | Registrati", "Torna su", "Foto: archivio",
    "Leggi l'informativa sulla privacy.", "Caricamento in corso...", "Ok.", "Grazie!",
]
PRODUCTS = ["Scarpe da ginnastica", "Borsa in pelle", "Giacca impermeabile", "Zaino da trekking",
            "Lampada da tavolo", "Caffettiera in acciaio", "Set di pentole", "Orologio da polso"]
BAD = ["cazzo", "merda", "stronzo", "vaffanculo", "fuck", "shit"]


def italian_sentence(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.45:
        sentence = (rng.choice(SUBJECTS) + " " + rng.choice(ACTIONS) + rng.choice(COMPLEMENTS) + ".")
        return sentence.format(city=rng.choice(CITIES), obj=rng.choice(OBJECTS).format(saint=rng.choice(SAINTS)))
    if kind < 0.7:
        return rng.choice(FOLLOWUPS)
    return rng.choice(GENERAL_IT)


def paragraph(rng: random.Random, sentence, n=None) -> str:
    return " ".join(sentence(rng) for _ in range(n or rng.randint(2, 5)))


def noisy(rng: random.Random, body: list[str], share: float = 0.35) -> list[str]:
    out = [rng.choice(NOISE[:2]), rng.choice(["Notizie dal territorio", "Cronaca locale", "Cultura e tempo libero"])]
    for line in body:
        out.append(line)
        if rng.random() < share:
            out.append(rng.choice(NOISE))
    return out + [rng.choice(NOISE) for _ in range(rng.randint(1, 3))]


# How pages are drawn for each shard: page kinds, paragraphs per article, sentences per
# paragraph, share of noise lines after each paragraph.
STYLES = {
    "first": {"weights": [56, 5, 13, 4, 12, 8, 2, 0.3], "paragraphs": (3, 10), "sentences": (2, 5), "noise": 0.35},
    "second": {"weights": [44, 5, 14, 4, 18, 10, 4, 0.6], "paragraphs": (1, 16), "sentences": (1, 9), "noise": 0.6},
}


def make_page(rng: random.Random, style: str = "first") -> tuple[str, str]:
    """(text, kind) of one web page."""
    shape = STYLES[style]
    kind = rng.choices(["article", "badword", "foreign", "mixed", "noise", "short", "code", "long"],
                       weights=shape["weights"])[0]
    if kind in ("article", "badword", "mixed"):
        body = [paragraph(rng, italian_sentence, rng.randint(*shape["sentences"]))
                for _ in range(rng.randint(*shape["paragraphs"]))]
        if kind == "badword":
            body.insert(rng.randrange(len(body)), f"Commento: ma che {rng.choice(BAD)} di servizio è questo?")
        if kind == "mixed":  # an Italian page quoting English passages: still mostly Italian
            body.insert(1, paragraph(rng, lambda r: r.choice(FOREIGN["en"]), 2))
        return "\n".join(noisy(rng, body, shape["noise"])), kind
    if kind == "foreign":
        lang = rng.choice(sorted(FOREIGN))
        body = [paragraph(rng, lambda r: r.choice(FOREIGN[lang])) for _ in range(rng.randint(3, 8))]
        return "\n".join(noisy(rng, body, 0.2)), f"foreign-{lang}"
    if kind == "noise":
        lines = [rng.choice(NOISE) for _ in range(rng.randint(3, 12))]
        lines += [f"{rng.choice(PRODUCTS)} {rng.randint(10, 300)},{rng.randint(0, 99):02d} €"
                  for _ in range(rng.randint(0, 15))]
        return "\n".join(lines), kind
    if kind == "short":
        return "\n".join(noisy(rng, [paragraph(rng, italian_sentence, rng.randint(1, 4))])), kind
    if kind == "code":
        lines = ["function init(){ var x = document.getElementById('menu'); x.style.display = 'block'; }"] * 3
        return "\n".join(noisy(rng, lines + [paragraph(rng, italian_sentence, 2)])), kind
    body = [paragraph(rng, italian_sentence, 5) for _ in range(160)]  # well over 50,000 characters
    return "\n".join(body), kind


def generate(path: Path, megabytes: float, seed: int = 0, style: str = "first") -> dict:
    """Write an mC4-like shard of about `megabytes` of JSON lines; return {url: kind}."""
    rng = random.Random(seed)
    kinds, size, n = {}, 0, 0
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as handle:
        while size < megabytes * 1e6:
            text, kind = make_page(rng, style)
            url = f"https://www.sito{rng.randint(1, 5000)}.example.it/pagina/{n}"
            stamp = f"2020-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:" \
                    f"{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}Z"
            line = (json.dumps({"text": text, "timestamp": stamp, "url": url}, ensure_ascii=False) + "\n").encode()
            handle.write(line)
            size += len(line)
            kinds[url] = kind
            n += 1
    return kinds


# ---------------------------------------------------------------------------------------
# The plain baseline: same rules, one document at a time, langdetect on each


def baseline(path: Path, badword_files: list[Path]) -> dict[str, str]:
    """{url: cleaned text} of the documents a straightforward cleaner keeps."""
    import langdetect

    from llamantino.data.clean import CITATION, count_sentences, read_list

    langdetect.DetectorFactory.seed = 0
    policy_phrases = read_list("it", "policy") + read_list("en", "policy")
    words = [w.strip().lower() for f in badword_files for w in f.read_text(encoding="utf-8").splitlines()
             if w.strip() and not w.startswith("#")]
    badwords = re.compile(r"(?:\W|^)({})(?:\W|$)".format("|".join(re.escape(w) for w in words)))
    kept = {}
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            doc = json.loads(line)
            text = doc["text"]
            if badwords.search(text.lower()):
                continue
            lines, sentences = [], 0
            for raw in text.splitlines():
                raw = raw.strip()
                if not raw or any(len(w) > 1000 for w in raw.split()):
                    continue
                raw = CITATION.sub("", raw).strip()
                if not raw.endswith((".", "?", "!", '"')) or raw.endswith("..."):
                    continue
                if len(raw.split()) < 3:
                    continue
                low = raw.lower()
                if "lorem ipsum" in low or "javascript" in low or "{" in raw:
                    continue
                if any(p in low.replace("\u2019", "'") for p in policy_phrases):
                    continue
                lines.append(raw)
                sentences += count_sentences(raw)
            result = "\n".join(lines)
            if sentences < 5 or not 500 <= len(result) <= 50000:
                continue
            try:
                if langdetect.detect(result) != "it":
                    continue
            except langdetect.lang_detect_exception.LangDetectException:
                continue
            kept[doc["url"]] = result
    return kept


def ours(path: Path, out: Path, workers: int, langid: str = "py3langid") -> dict[str, str]:
    from llamantino.core.runner import config_for
    from llamantino.data.clean import run

    shutil.rmtree(out, ignore_errors=True)  # a finished run in `out` would be skipped, not timed
    run(config_for("clean", inputs=[str(path)], output=str(out), workers=workers, langid=langid))
    kept = {}
    for shard in sorted(out.glob("part-*.jsonl.gz")):
        with gzip.open(shard, "rt", encoding="utf-8") as handle:
            for line in handle:
                doc = json.loads(line)
                kept[doc["url"]] = doc["text"]
    return kept


def timed(func, *args):
    """(result, wall seconds, CPU seconds of this process and of the worker processes it ended)."""
    import resource

    def cpu() -> float:
        return sum(u.ru_utime + u.ru_stime for u in (resource.getrusage(resource.RUSAGE_SELF),
                                                    resource.getrusage(resource.RUSAGE_CHILDREN)))

    t0, c0 = time.perf_counter(), cpu()
    result = func(*args)
    return result, time.perf_counter() - t0, cpu() - c0


def bench(args) -> None:
    from llamantino.data.clean import available_cores

    if not args.workdir:
        with tempfile.TemporaryDirectory(prefix="bench-clean-") as tmp:
            args.workdir = tmp
            return bench(args)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"{available_cores()} cores; load average before: {load()}")
    for style in (["first", "second"] if args.shard == "both" else [args.shard]):
        bench_shard(args, workdir, style)
    print(f"\nload average after: {load()}")


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1, 5, 15 min)"


def bench_shard(args, workdir: Path, style: str) -> None:
    from llamantino.data.clean import BUNDLED_BADWORDS, available_cores

    shard = workdir / f"c4-it-bench-{style}.json.gz"
    kinds = generate(shard, args.mb, seed=0 if style == "first" else 1, style=style)
    with gzip.open(shard, "rb") as handle:
        megabytes = len(handle.read()) / 1e6
    n = len(kinds)
    cores = available_cores()
    print(f"\n=== {style} shard: {n} documents, {megabytes:.1f} MB of JSON lines "
          f"({shard.stat().st_size / 1e6:.1f} MB gzipped)")

    rows = []
    ours_kept, *times = timed(ours, shard, workdir / "out", 0)
    rows.append((f"llamantino clean ({cores} workers)", *times))
    one_kept, *times = timed(ours, shard, workdir / "out-1", 1)
    rows.append(("llamantino clean --workers 1", *times))
    if args.with_langdetect_engine:
        ld_kept, *times = timed(ours, shard, workdir / "out-langdetect", 0, "langdetect")
        rows.append((f"llamantino clean --langid langdetect ({cores} workers)", *times))
    base_kept, t_base, cpu_base = timed(baseline, shard, [BUNDLED_BADWORDS["it"], BUNDLED_BADWORDS["en"]])
    rows.append(("baseline: plain loop, langdetect, 1 process", t_base, cpu_base))

    # Wall time is what a user waits; CPU time (all processes) is what other jobs on the
    # cores disturb least: on a quiet machine, wall time is about CPU time / workers.
    print(f"\n{'':52s} {'seconds':>8s} {'docs/s':>9s} {'MB/s':>7s} {'vs baseline':>12s} "
          f"{'CPU s':>8s} {'CPU vs baseline':>16s}")
    for name, seconds, cpu in rows:
        print(f"{name:52s} {seconds:8.2f} {n / seconds:9.0f} {megabytes / seconds:7.2f} {t_base / seconds:11.1f}x "
              f"{cpu:8.2f} {cpu_base / cpu:15.1f}x")

    def agreement(a: dict, b: dict) -> str:
        same_set = set(a) & set(b)
        same_text = sum(a[u] == b[u] for u in same_set)
        return (f"kept {len(a)} vs {len(b)}; both keep {len(same_set)}, only first {len(set(a) - set(b))}, "
                f"only second {len(set(b) - set(a))}; identical text in {same_text}/{len(same_set)}")

    print("\nagreement (llamantino py3langid vs baseline):", agreement(ours_kept, base_kept))
    assert one_kept == ours_kept, "the worker count changed the output"
    if args.with_langdetect_engine:
        print("agreement (llamantino langdetect vs baseline):", agreement(ld_kept, base_kept))
    by_kind: dict[str, list[int]] = {}
    for url, kind in kinds.items():
        row = by_kind.setdefault(kind.split("-")[0], [0, 0, 0])
        row[0] += 1
        row[1] += url in ours_kept
        row[2] += url in base_kept
    print("kept by page kind (pages, llamantino, baseline):",
          ", ".join(f"{k} {v[0]}/{v[1]}/{v[2]}" for k, v in sorted(by_kind.items())))
    print_time_shares(shard)
    # One line per headline figure, for a summary over every benchmark.
    (_, t_ours, cpu_ours), (_, t_base, cpu_base) = rows[0], rows[-1]
    for figure, ours_value, base_value in ((f"documents/s, {style} shard", n / t_ours, n / t_base),
                                           (f"CPU seconds, {style} shard", cpu_ours, cpu_base)):
        print("RESULT " + json.dumps({"benchmark": "clean", "figure": figure, "ours": round(ours_value, 1),
                                      "baseline": round(base_value, 1),
                                      "baseline_name": "single-process langdetect cleaner"}))


# ---------------------------------------------------------------------------------------
# Where the time goes: each step of llamantino clean on its own, in one process


def time_shares(path: Path) -> list[tuple[str, str, float]]:
    """(step, process, seconds) of each step of `llamantino clean` over the shard."""
    import io
    import pickle
    from multiprocessing.reduction import ForkingPickler

    from llamantino.core.runner import config_for
    from llamantino.data.clean import CHUNK_DOCS, Cleaner, _json_default

    clock = time.perf_counter
    cfg = config_for("clean", inputs=["x"], output="y")
    t0 = clock()
    with gzip.open(path, "rb") as handle:
        lines = handle.read().decode("utf-8").splitlines(keepends=True)
    t_gunzip = clock() - t0

    t0 = clock()
    records = [json.loads(line) for line in lines]
    t_decode = clock() - t0

    cleaner = Cleaner(cfg)
    detector, asked = cleaner.detector, []

    class Recorder:  # stands in for the detector: the rules are timed without it
        def detect(self, text):
            asked.append(text)
            return cfg.lang

    cleaner.detector = Recorder()
    detector.detect(records[0]["text"])  # anything loaded lazily, outside the clock
    t0 = clock()
    cleaned = [cleaner.clean(record["text"]) for record in records]
    t_rules = clock() - t0

    t0 = clock()
    answers = iter([detector.detect(text) for text in asked])
    t_langid = clock() - t0
    kept, results = [], []
    for position, (record, (text, reason, counts)) in enumerate(zip(records, cleaned)):
        if text is not None and next(answers) != cfg.lang:
            text, reason = None, "wrong_language"
        if text is not None:
            kept.append(dict(record, text=text))
        results.append(((0, position), text, reason, counts, len(record["text"]), len(text or "")))

    t0 = clock()
    out_lines = [json.dumps(record, ensure_ascii=False, default=_json_default) + "\n" for record in kept]
    t_encode = clock() - t0

    t0 = clock()
    with gzip.GzipFile(filename="", mode="wb", fileobj=io.BytesIO(), mtime=0) as raw:
        with io.TextIOWrapper(raw, encoding="utf-8", newline="\n") as handle:
            handle.writelines(out_lines)
    t_gzip = clock() - t0

    # What the pool pickles: chunks of (position, record) out, result tuples back.
    sent = [[((0, i), r) for i, r in enumerate(records[k:k + CHUNK_DOCS], start=k)]
            for k in range(0, len(records), CHUNK_DOCS)]
    back = [results[k:k + CHUNK_DOCS] for k in range(0, len(results), CHUNK_DOCS)]
    t0 = clock()
    for chunk in sent + back:
        pickle.loads(ForkingPickler.dumps(chunk))
    t_ipc = clock() - t0
    return [("gzip (read input)", "main", t_gunzip), ("JSON decoding", "main", t_decode),
            ("line and document rules", "worker", t_rules), ("language identification", "worker", t_langid),
            ("JSON encoding", "worker", t_encode), ("gzip (write shards)", "main", t_gzip),
            ("inter-process transfer (pickling)", "both", t_ipc)]


def print_time_shares(path: Path) -> None:
    steps = time_shares(path)
    total = sum(seconds for _, _, seconds in steps)
    print(f"\nCPU time by step of llamantino clean (one step at a time, one process, this shard):")
    print(f"{'step':36s} {'process':>8s} {'seconds':>8s} {'share':>7s}")
    for name, where, seconds in steps:
        print(f"{name:36s} {where:>8s} {seconds:8.2f} {100 * seconds / total:6.1f}%")
    main = sum(seconds for _, where, seconds in steps if where in ("main", "both"))
    print(f"{'total':36s} {'':>8s} {total:8.2f}  (main process: {main:.2f} s, its share {100 * main / total:.0f}%)")


# ---------------------------------------------------------------------------------------
# Language detectors: speed and agreement on Italian and other-language text


def detectors() -> dict:
    from llamantino.data.langid import DETECTORS

    found = {name: cls().detect for name, cls in DETECTORS.items()}
    try:
        from lingua import LanguageDetectorBuilder
    except ImportError:
        print("lingua: not installed (pip install lingua-language-detector to compare it too)")
        return found
    for name, builder in (("lingua (high accuracy)", LanguageDetectorBuilder.from_all_languages()),
                          ("lingua (low accuracy)", LanguageDetectorBuilder.from_all_languages()
                           .with_low_accuracy_mode())):
        model = builder.with_preloaded_language_models().build()

        def detect(text, model=model):
            lang = model.detect_language_of(text)
            return lang.iso_code_639_1.name.lower() if lang else "und"

        found[name] = detect
    return found


def compare_langid(args) -> None:
    from llamantino.core.runner import config_for
    from llamantino.data.clean import Cleaner

    rng = random.Random(1)
    cleaner = Cleaner(config_for("clean", inputs=["x"], output="y"))
    docs = []  # (label, cleaned text) of pages that reach the language rule
    while len(docs) < args.docs:
        text, kind = make_page(rng)
        if kind not in ("article", "mixed") and not kind.startswith("foreign"):
            continue
        lines = []
        for raw in text.splitlines():
            rule, line = cleaner.line_rule(raw.strip())
            if raw.strip() and rule is None:
                lines.append(line)
        docs.append(("it" if kind in ("article", "mixed") else kind.split("-")[1], "\n".join(lines)))
    sentences = [("it", s) for s in GENERAL_IT + FOLLOWUPS] + [(lang, s) for lang, ss in FOREIGN.items() for s in ss]
    fragments = [(lang, " ".join(s.split()[:4])) for lang, s in sentences]  # like titles and menu lines
    print(f"{len(docs)} cleaned pages ({sum(label == 'it' for label, _ in docs)} Italian, the rest in "
          f"{', '.join(sorted(FOREIGN))}), mean {sum(len(t) for _, t in docs) / len(docs):.0f} characters; "
          f"{len(sentences)} single sentences and their first four words")
    results = {}
    found = detectors()
    print(f"\n{'':24s} {'':>8s} {'':>8s} {'it / not it right':^46s} {'language right':^18s}")
    print(f"{'detector':24s} {'ms/page':>8s} {'pages/s':>8s} {'pages':>14s} {'sentences':>14s} {'4 words':>14s} "
          f"{'sentences':>10s} {'4 words':>8s}")
    def right(items, answers, exact=False) -> str:
        ok = sum((a == label) if exact else ((a == "it") == (label == "it")) for (label, _), a in zip(items, answers))
        return f"{ok}/{len(items)}"

    for name, detect in found.items():
        detect(docs[0][1])  # load lazily built parts outside the clock
        t0 = time.perf_counter()
        page_answers = [detect(text) for _, text in docs]
        seconds = time.perf_counter() - t0
        results[name] = page_answers
        sentence_answers = [detect(text) for _, text in sentences]
        fragment_answers = [detect(text) for _, text in fragments]
        print(f"{name:24s} {1000 * seconds / len(docs):8.3f} {len(docs) / seconds:8.0f} "
              f"{right(docs, page_answers):>14s} {right(sentences, sentence_answers):>14s} "
              f"{right(fragments, fragment_answers):>14s} {right(sentences, sentence_answers, True):>10s} "
              f"{right(fragments, fragment_answers, True):>8s}")
    reference = results.get("langdetect")
    if reference:
        for name, answers in results.items():
            same = sum((a == "it") == (b == "it") for a, b in zip(answers, reference))
            print(f"agreement with langdetect on keep/drop: {name}: {same}/{len(reference)}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=20.0, help="size of each generated shard (MB of JSON lines)")
    parser.add_argument("--shard", choices=("first", "second", "both"), default="both",
                        help="which generated shard(s) to clean")
    parser.add_argument("--workdir", help="where to write the shard and outputs (default: a temporary folder)")
    parser.add_argument("--with-langdetect-engine", action="store_true",
                        help="also time llamantino clean with --langid langdetect")
    parser.add_argument("--langid", action="store_true", help="compare the language detectors instead")
    parser.add_argument("--docs", type=int, default=2000, help="pages for --langid")
    args = parser.parse_args()
    compare_langid(args) if args.langid else bench(args)
