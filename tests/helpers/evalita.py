"""What the EVALITA task tests share: the paper's Table 1, and small readers and writers."""

from pathlib import Path

from llamantino.evaluate.evalita import get_task
from llamantino.evaluate.evalita.samples import sample_files

# Table 1 of the paper, written out from the paper's text (lines joined, "con-tribuisce" and
# "cen-trosinistra" unhyphenated; its typos "Documeto" and "resituisci" kept). WiC-ITA's word
# and HaSpeeDe3's account figures are the paper's examples there.
TABLE_1 = {
    "acti-a": "Stabilisci se il seguente testo contiene una teoria del complotto o cospirazione. Rispondi con si o no.",
    "acti-b": "Classifica il seguente testo in una di queste quattro categorie di teorie del complotto: Covid, "
              "Qanon, Terra Piatta, Russia.",
    "clinkart": "Trova nel testo in input le menzioni testuali dei test di laboratorio o misurazioni (EVENT) e "
                "collegali ai loro risultati (RML). Le relazioni sono rappresentate da coppie ordinate di menzioni "
                "di entità (RML, EVENT), ciascuna identificata da inizi e fine degli offset carattere. Per ogni "
                "relazione, scrivi '[BREL]', seguito dal risultato seguito da '[SEP]', seguito dal test, seguito "
                "da '[EREL]'. Se non ci sono relazioni, restituisci [NOREL]",
    "discotex-1": "Classifica la frase in input come 'Coerente' se si integra logicamente e contribuisce a formare "
                  "un testo coerente con il paragrafo di contesto. Se la frase target risulta incoerente con il "
                  "paragrafo, classificala come 'Incoerente'.",
    "discotex-2": "Predici il punteggio medio di coerenza assegnato dai valutatori umani per il testo in input. "
                  "Utilizza una scala ordinale a 5 punti (da 1 a 5) per riflettere la percezione graduale della "
                  "coerenza.",
    "emit": "Categorizza le emozioni espresse nel testo fornito in input o determina l'assenza di emozioni. Puoi "
            "classificare il testo come neutrale o identificare una o più delle seguenti emozioni: rabbia, "
            "anticipazione, disgusto, paura, gioia, tristezza, sorpresa, fiducia, amore.",
    "geolingit": "Determina la regione di appartenenza, la latitudine e la longitudine dell'autore del tweet in "
                 "input.",
    "haspeede3": "Stabilisci se il tweet in input contiene discorsi che incitano all'odio. Rispondi con si o no.",
    "haspeede3-contextual": "Stabilisci se il tweet in input contiene discorsi che incitano all'odio considerando "
                            "anche il contesto relativo alle statistiche dell'account. Rispondi con si o no. "
                            "Contesto: Data: 2018-08-11 Numero di retweet: 0.0 Numero di mi piace: 6.0 Data "
                            "creazione account: 2018-04-01 Numero di post: 554.0 Follower: 748.0 Amici:",
    "hodi-a": "Stabilisci se il testo in input ha contenuti omotransfobici o meno. Rispondi con si o no.",
    "hodi-b": "Estrai dal testo in input le parole che denotano concetti omotransfobici. Separa le parole estratte "
              "con [SEP]. Se non ci sono parole estratte, restituisci 'Non omotransfobico'.",
    "langlearn": "Data in input un coppia di documenti (Documento 1 [SEP] Documeto 2) scritti dallo stesso "
                 "studente, stabilisci se il documento 1 è stato scritto prima del documento 2. Rispondi con si o "
                 "no.",
    "nermud": "Elenca le menzioni di entità presenti nel testo in input, indicandone il tipo: [PER] (persona), "
              "[LOC] (luogo), [ORG] (organizzazione). Se non ci sono entità, resituisci: 'Nessuna menzione'",
    "politicit": "Indica se l'autore del testo in input è un 'uomo' o una 'donna', seguito dalla sua appartenenza "
                 "politica scegliendo tra 'destra', 'sinistra', 'centrodestra', 'centrosinistra'.",
    "wic-ita": "Stabilisci nelle due frasi in input la parola 'affare' è usata con lo stesso significato. Rispondi "
               "con si o no.",
}


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def read_items(task: str, split: str) -> list:
    """The task's items from its bundled sample files."""
    return get_task(task).read(sample_files(task, split))


def item_by_id(items, item_id):
    return next(it for it in items if it.id == item_id)


def score_files(task, gold: Path, pred: Path, **options) -> dict:
    """The task's figures for a submission file against a gold file, both read as
    `llamantino evalita score` reads them.

    The tests of agreement with the organisers' scorers run small files through this and pin,
    beside the figures derived by hand, what the organisers' own script prints on the very same
    files (run outside this project; each test module names the script's repository, commit and
    library versions); their edge cases pin where llamantino deliberately differs (see each task
    module's notes)."""
    return task.score(task.read_gold([gold]), task.read_predictions(pred), **options)


def read_file(name: str, method: str, path: Path, text: str, *beside: Path):
    """Task `name`'s reader `method` (read, read_gold or read_predictions) on `text` written at
    `path`; read and read_gold take the files `beside` too."""
    task = get_task(name)
    if method == "read_predictions":
        return task.read_predictions(write(path, text))
    return getattr(task, method)([write(path, text), *beside])
