"""Write the demo shard src/llamantino/assets/demo/mc4_it_sample.jsonl.gz.

A small Italian mC4-format shard (`text`, `timestamp`, `url`) written for the project:
proper Italian articles wrapped in the noise real web pages carry (menus, cookie banners,
javascript warnings, titles without punctuation), plus whole pages the cleaner must drop.
`KEPT` lists the pages that must survive `llamantino clean`; `DROPPED` says why each
other page goes. Run `python tests/helpers/make_demo_shard.py` after editing; the output bytes
depend only on this file.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

OUT = Path(__file__).resolve().parents[2] / "src" / "llamantino" / "assets" / "demo" / "mc4_it_sample.jsonl.gz"

MENU = "Home | Chi siamo | Servizi | Blog | Contatti"
COOKIE_IT = ("Questo sito utilizza cookie tecnici e di terze parti per migliorare la tua esperienza. "
             "Continuando la navigazione accetti l'uso dei cookie.")
COOKIE_EN = "This website uses cookies to improve your experience. By continuing you accept our use of cookies."
SHARE = "Condividi su Facebook Twitter WhatsApp"

# (url, timestamp, text, fate): fate is "kept" or the rule that drops the page.
PAGES = [
    # --- proper articles, each wrapped in some noise ---------------------------------
    ("https://www.cucinadicasa.it/ricette/risotto-alla-milanese", "2020-02-19T08:14:52Z", "\n".join([
        MENU,
        "Risotto alla milanese",
        "Tempo di preparazione: 40 minuti",
        "Il risotto alla milanese è uno dei piatti più celebri della cucina lombarda. Il suo colore dorato "
        "viene dallo zafferano, una spezia preziosa che un tempo si usava anche per colorare le vetrate del Duomo.",
        "Per prima cosa si prepara un buon brodo di carne, che deve restare caldo per tutta la cottura. "
        "In una casseruola si fa appassire la cipolla tritata finemente con una noce di burro e un po' di midollo.",
        "Si aggiunge il riso e lo si tosta per un paio di minuti, mescolando con un cucchiaio di legno. "
        "Poi si sfuma con un bicchiere di vino bianco secco e si lascia evaporare l'alcol.",
        "A questo punto si versa il brodo un mestolo alla volta, aspettando che venga assorbito prima di "
        "aggiungerne altro. Verso metà cottura si unisce lo zafferano sciolto in poco brodo caldo.",
        "Quando il riso è al dente si spegne il fuoco e si manteca con burro freddo e parmigiano grattugiato. "
        "Il risotto va servito subito, ben all'onda, magari accompagnato da un ossobuco.",
        "Ingredienti per 4 persone",
        "320 g di riso Carnaroli",
        SHARE,
        COOKIE_IT,
    ]), "kept"),
    ("https://www.storiadellarte.example.it/brunelleschi-cupola-firenze", "2019-11-03T17:40:11Z", "\n".join([
        "Storia dell'arte > Rinascimento > Architettura",
        "La cupola di Brunelleschi",
        "La cupola di Santa Maria del Fiore fu costruita tra il 1420 e il 1436 su progetto di Filippo "
        "Brunelleschi.[1] Ancora oggi è la più grande cupola in muratura mai realizzata.",
        "Il problema principale era l'ampiezza del tamburo ottagonale, largo più di quaranta metri. "
        "Nessuno sapeva come costruire una volta così grande senza le tradizionali centine di legno.",
        "Brunelleschi propose una soluzione audace: due calotte, una interna e una esterna, collegate da "
        "costoloni e murate con mattoni disposti a spina di pesce.[2] In questo modo la struttura si reggeva "
        "da sola man mano che saliva.",
        "Per sollevare i materiali progettò anche macchine nuove, come un argano azionato da buoi capace di "
        "invertire il moto senza girare gli animali. Alcuni disegni di queste macchine sono arrivati fino a noi "
        "grazie agli studi di Leonardo.",
        "La lanterna che corona la cupola fu completata dopo la morte dell'architetto, avvenuta nel 1446.",
        "Note",
        "Articoli correlati: Donatello, Masaccio, Palazzo Pitti",
    ]), "kept"),
    ("https://www.natura-oggi.example.it/api-impollinazione", "2021-04-22T09:05:37Z", "\n".join([
        MENU,
        "Le api e l'impollinazione",
        "Senza le api molte delle piante che mangiamo ogni giorno farebbero fatica a riprodursi. Mele, pere, "
        "mandorle e zucchine dipendono in gran parte dal lavoro degli insetti impollinatori.",
        "Quando un'ape visita un fiore per raccogliere il nettare, il polline si attacca ai peli del suo corpo. "
        "Passando al fiore successivo, l'insetto ne lascia una parte sul pistillo e rende possibile la fecondazione.",
        "Negli ultimi anni gli apicoltori hanno registrato perdite preoccupanti. Tra le cause ci sono alcuni "
        "pesticidi, i parassiti come la varroa e gli sbalzi di temperatura sempre più frequenti.",
        "Anche chi vive in città può dare una mano. Basta coltivare sul balcone piante fiorite come lavanda, "
        "rosmarino e timo, ed evitare i prodotti chimici più aggressivi.",
        "Leggi anche: come costruire un hotel per insetti",
        "Per visualizzare correttamente questa pagina è necessario abilitare JavaScript nel browser.",
    ]), "kept"),
    ("https://www.viaggiareinitalia.example.it/cinque-terre-autunno", "2020-10-14T12:31:08Z", "\n".join([
        "Viaggi | Liguria | Cinque Terre",
        "Le Cinque Terre in autunno",
        "Pubblicato il 14 ottobre 2020",
        "Chi visita le Cinque Terre in estate trova spesso sentieri affollati e treni pieni. In autunno invece "
        "i cinque borghi ritrovano un ritmo più lento e le colline si colorano di giallo e di rosso.",
        "Il Sentiero Azzurro collega Monterosso a Riomaggiore lungo la costa. Alcuni tratti sono stati chiusi "
        "dopo le frane degli anni scorsi, perciò conviene informarsi prima di partire.",
        "A Vernazza vale la pena fermarsi sul molo al tramonto, quando le case colorate si riflettono "
        "nell'acqua del porticciolo. A Manarola si possono assaggiare lo sciacchetrà e le acciughe sotto sale.",
        "Per muoversi tra i paesi il treno resta il mezzo più comodo. Le auto private infatti non possono "
        "entrare nei centri storici e i parcheggi sono pochi.",
        "Prenota ora il tuo soggiorno",
        "Tags: Liguria, trekking, mare, borghi",
        COOKIE_EN,
    ]), "kept"),
    ("https://www.sportlocale.example.it/volley-femminile-vittoria-tie-break", "2021-01-31T22:02:45Z", "\n".join([
        "Sport locale - Pallavolo",
        "Volley femminile, vittoria al tie-break per la squadra di casa",
        "Serata di grande emozione al palazzetto, dove le padrone di casa hanno superato la capolista dopo "
        "quasi due ore e mezza di gioco. Il pubblico ha sostenuto la squadra dal primo all'ultimo punto.",
        "Il primo set è stato dominato dalle ospiti, precise in battuta e molto efficaci a muro. Nel secondo "
        "l'allenatore ha cambiato la regista e la partita ha preso un'altra direzione.",
        "Dopo aver perso di poco il terzo parziale, la squadra ha reagito con carattere e ha portato la gara "
        "al quinto set. Sul quattordici pari un ace della capitana ha deciso l'incontro.",
        "Con questa vittoria la formazione sale al terzo posto in classifica. Sabato prossimo è attesa da una "
        "difficile trasferta in Veneto.",
        "Risultato finale: 3-2 (18-25, 25-21, 23-25, 25-19, 16-14)",
        "Commenti (0)",
    ]), "kept"),
    ("https://www.impresaoggi.example.it/piccole-imprese-digitale", "2019-06-05T07:48:19Z", "\n".join([
        MENU,
        "Economia",
        "Le piccole imprese e la sfida del digitale",
        "Secondo un'indagine delle camere di commercio, quasi un'impresa artigiana su due non ha ancora un "
        "sito internet. Eppure sempre più clienti cercano online prima di scegliere un fornitore.",
        "Il problema non è solo tecnico ma anche culturale. Molti titolari temono costi elevati e non sanno a "
        "chi rivolgersi per farsi consigliare.",
        "Eppure esistono strumenti semplici per iniziare, come una scheda aziendale sulle mappe, una pagina "
        "sui social network e un catalogo dei prodotti aggiornato. Alcune regioni offrono contributi a fondo "
        "perduto per la formazione del personale.",
        "Chi ha fatto il passo racconta di aver trovato nuovi clienti anche fuori dalla propria provincia. "
        "Il digitale, insomma, può diventare un alleato anche per la bottega sotto casa.",
        "Iscriviti alla newsletter",
        "Informativa sulla privacy e termini di utilizzo del servizio di newsletter.",
    ]), "kept"),
    ("https://www.tecnologiafacile.example.it/scegliere-portatile", "2022-03-09T15:20:04Z", "\n".join([
        "Guide > Computer > Portatili",
        "Come scegliere un computer portatile",
        "Prima di acquistare un portatile conviene chiedersi come lo useremo davvero. Uno studente che scrive "
        "tesine e naviga in rete ha esigenze molto diverse da un grafico o da un appassionato di videogiochi.",
        "Il processore e la memoria determinano la velocità del sistema. Per un uso quotidiano bastano otto "
        "gigabyte di RAM, mentre per il montaggio video è meglio salire a sedici o più.",
        "Un disco a stato solido rende l'avvio e l'apertura dei programmi molto più rapidi. Anche lo schermo "
        "merita attenzione, perché passeremo ore a guardarlo.",
        "Infine bisogna considerare il peso e la durata della batteria. Chi viaggia spesso apprezzerà un modello "
        "leggero, capace di arrivare a sera senza cercare una presa di corrente.",
        "Prezzo consigliato: da 499 euro",
        "Per il corretto funzionamento del comparatore prezzi abilita JavaScript.",
        "function trackClick(id) { window.dataLayer.push({event: 'click', id: id}); }",
    ]), "kept"),
    ("https://www.salutebenessere.example.it/camminare-ogni-giorno", "2020-05-27T06:12:59Z", "\n".join([
        MENU,
        "Camminare ogni giorno fa bene al cuore",
        "Una passeggiata a passo svelto di mezz'ora al giorno è uno dei gesti più semplici per prendersi cura "
        "della propria salute. I medici la consigliano a tutte le età, salvo controindicazioni specifiche.",
        "Il movimento regolare aiuta a controllare la pressione, migliora la circolazione e rinforza i muscoli "
        "delle gambe. Inoltre favorisce il sonno e riduce lo stress accumulato durante la giornata.",
        "Non servono attrezzature costose. Bastano un paio di scarpe comode e un percorso sicuro, magari in un "
        "parco o lungo una pista ciclopedonale.",
        "Chi parte da zero può cominciare con dieci minuti e aumentare gradualmente la durata. L'importante è "
        "la costanza, più che la velocità.",
        "Le informazioni di questo articolo non sostituiscono il parere del medico.",
        "Articolo aggiornato il 27/05/2020",
    ]), "kept"),
    ("https://www.libriecultura.example.it/mostra-venezia-vedutisti", "2018-09-16T19:55:30Z", "\n".join([
        "Cultura | Mostre | Venezia",
        "I vedutisti veneziani in mostra a Palazzo Ducale",
        "Fino alla fine di gennaio Palazzo Ducale ospita una mostra dedicata ai grandi vedutisti del Settecento. "
        "Accanto alle tele di Canaletto e Guardi sono esposti disegni e incisioni raramente visibili al pubblico.",
        "Il percorso si apre con le vedute del Bacino di San Marco, dove la luce sembra quasi riflettersi sulle "
        "pareti delle sale. Colpisce la precisione con cui gli artisti registravano ogni dettaglio di barche, "
        "palazzi e figure.",
        "Una sezione è dedicata alla camera ottica, lo strumento che aiutava i pittori a tracciare le prospettive. "
        "Un modello ricostruito permette ai visitatori di provarne il funzionamento.",
        "La mostra si chiude con le opere destinate ai viaggiatori del Grand Tour, che portavano a casa un "
        "ricordo della città. Il catalogo, curato da storici dell'arte di diverse università, è in vendita "
        "presso il bookshop.",
        "Orari: tutti i giorni 9-19",
        "Biglietti: intero 25 euro, ridotto 13 euro",
    ]), "kept"),
    ("https://www.comuneinforma.example.it/raccolta-differenziata-risultati", "2021-07-12T10:44:21Z", "\n".join([
        "Comune Informa - Notizie dal territorio",
        "Raccolta differenziata, il paese supera l'ottanta per cento",
        "Il nostro comune ha raggiunto nel 2020 l'ottantadue per cento di raccolta differenziata. È il risultato "
        "migliore degli ultimi dieci anni e colloca il paese tra i più virtuosi della provincia.",
        "Il merito va soprattutto ai cittadini, che hanno imparato a separare con cura carta, plastica, vetro e "
        "organico. Determinante è stato anche il passaggio alla raccolta porta a porta.",
        "L'amministrazione ha annunciato che parte del risparmio sarà restituito alle famiglie con una riduzione "
        "della tariffa. Nei prossimi mesi verrà inoltre aperto un nuovo centro di raccolta per i rifiuti "
        "ingombranti.",
        "Restano alcuni problemi, come l'abbandono di sacchi ai margini delle strade di campagna. Per questo "
        "saranno installate nuove fototrappole nelle zone più colpite.",
        "Calendario della raccolta 2021 (PDF)",
        "Il sito del comune utilizza i cookie per finalità statistiche. Leggi l'informativa sui cookie.",
    ]), "kept"),
    ("https://www.ortoebalcone.example.it/basilico-in-vaso", "2022-05-02T16:03:27Z", "\n".join([
        MENU,
        "Coltivare il basilico in vaso",
        "Il basilico è una delle piante aromatiche più facili da coltivare sul balcone. Ama il sole e il caldo, "
        "perciò va seminato quando le notti non sono più fredde.",
        "Il terriccio deve essere leggero e ben drenato, con uno strato di argilla espansa sul fondo del vaso. "
        "Le annaffiature vanno fatte al mattino o alla sera, evitando di bagnare le foglie.",
        "Per avere una pianta folta bisogna cimarla spesso, togliendo le punte dei rami più alti. In questo modo "
        "si ritarda anche la fioritura, che rende le foglie meno profumate.",
        "Se compaiono macchie scure sulle foglie, probabilmente la pianta ha ricevuto troppa acqua. In quel caso "
        "conviene lasciar asciugare il terreno prima di bagnarlo di nuovo.",
        "Tempo di semina: aprile-maggio",
        "Esposizione: pieno sole",
    ]), "kept"),
    ("https://www.musicaclassica.example.it/verdi-nabucco", "2017-12-08T21:17:46Z", "\n".join([
        "Musica classica > Opera > Giuseppe Verdi",
        "Nabucco, l'opera che rese famoso Verdi",
        "Quando Nabucco andò in scena alla Scala nel marzo del 1842, Giuseppe Verdi aveva ventotto anni e veniva "
        "da un periodo molto difficile. Aveva perso la moglie e i figli, e la sua opera precedente era stata un "
        "insuccesso.",
        "Il libretto di Temistocle Solera racconta la prigionia degli ebrei a Babilonia. Il coro Va', pensiero "
        "divenne presto uno dei brani più amati dal pubblico italiano.",
        "Nei decenni successivi molti vi lessero un richiamo al desiderio di libertà e di unità nazionale. Gli "
        "storici discutono ancora su quanto questo legame fosse sentito già alla prima rappresentazione.",
        "Di certo il successo fu immediato e aprì al compositore le porte dei maggiori teatri d'Europa. Da allora "
        "Nabucco non ha mai lasciato il repertorio.",
        "Ascolta la registrazione integrale",
        "Ti potrebbe interessare anche: Rigoletto, La traviata, Aida",
    ]), "kept"),
    ("https://www.cieloestelle.example.it/perseidi-notte-san-lorenzo", "2019-08-09T20:28:14Z", "\n".join([
        MENU,
        "Le stelle cadenti di San Lorenzo",
        "Ogni anno ad agosto la Terra attraversa la scia di detriti lasciata dalla cometa Swift-Tuttle. Quando "
        "questi granelli di polvere entrano nell'atmosfera si incendiano e diventano le stelle cadenti.",
        "Lo sciame prende il nome di Perseidi perché le scie sembrano partire dalla costellazione di Perseo. "
        "La tradizione popolare lo lega invece alla notte di San Lorenzo, il 10 agosto.",
        "In realtà il momento migliore per osservarle cade di solito tra l'11 e il 13 agosto, dopo la mezzanotte. "
        "Nelle notti più favorevoli se ne possono contare decine in un'ora.",
        "Per goderne al meglio bisogna allontanarsi dalle luci delle città e lasciare agli occhi il tempo di "
        "abituarsi al buio. Non serve il telescopio: basta una coperta e un po' di pazienza.",
        "Scarica la mappa del cielo di agosto",
        "JavaScript is disabled in your browser. Please enable JavaScript to view the interactive sky map.",
        "data:image/png;base64," + "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk" * 20 + ".",
    ]), "kept"),
    ("https://www.forniartigiani.example.it/pane-di-altamura", "2021-10-06T05:58:41Z", "\n".join([
        "Forni artigiani | Puglia",
        "Il pane di Altamura",
        "Il pane di Altamura è stato il primo prodotto da forno europeo a ottenere la denominazione di origine "
        "protetta. Si prepara con semola rimacinata di grano duro coltivato nella zona delle Murge.",
        "La lievitazione avviene con il lievito madre, rinfrescato ogni giorno dai fornai. La forma più "
        "tradizionale è quella alta e accavallata, che gli anziani chiamano ancora con il nome dialettale.",
        "Un tempo ogni famiglia impastava in casa e portava le pagnotte al forno del quartiere, segnandole con "
        "un timbro di legno. Così nessuno rischiava di tornare a casa con il pane di un altro.",
        "La crosta spessa e croccante protegge una mollica gialla e profumata, che resta morbida per diversi "
        "giorni. Per questo il pane di Altamura era il compagno ideale di pastori e contadini.",
        "Orari del forno: 6-13 e 17-20",
    ]), "kept"),
    ("https://www.amicianimali.example.it/adottare-un-cane", "2020-11-19T14:16:33Z", "\n".join([
        MENU,
        "Adottare un cane dal canile: cosa sapere",
        "Adottare un cane è una scelta che cambia la vita, sia la nostra sia quella dell'animale. Prima di "
        "decidere conviene valutare con onestà il tempo e lo spazio che possiamo offrirgli.",
        "I volontari del canile conoscono bene il carattere di ogni ospite. Raccontando le proprie abitudini si "
        "riceve un consiglio prezioso su quale cane possa adattarsi meglio alla famiglia.",
        "I primi giorni in casa possono essere difficili. Il cane deve abituarsi a nuovi odori, nuovi orari e "
        "nuove persone, perciò servono pazienza e regole chiare.",
        "Una visita dal veterinario è sempre consigliata, anche se l'animale è già vaccinato e dotato di "
        "microchip. Con il tempo arriveranno fiducia, affetto e lunghe passeggiate insieme.",
        "Adozioni del mese",
        COOKIE_IT,
    ]), "kept"),
    ("https://www.scuolaeformazione.example.it/scuola-all-aperto", "2022-09-12T08:26:57Z", "\n".join([
        "Scuola e formazione > Didattica",
        "La scuola all'aperto torna di moda",
        "Sempre più insegnanti portano la lezione fuori dall'aula, nei cortili, nei parchi e perfino nei boschi "
        "vicino alla scuola. L'idea non è nuova: già all'inizio del Novecento esistevano le scuole all'aperto.",
        "Secondo chi la pratica, stare all'aria aperta migliora l'attenzione e riduce l'agitazione dei bambini. "
        "Le scienze naturali si imparano osservando le foglie, gli insetti e il cambiare delle stagioni.",
        "Non mancano le difficoltà, dal maltempo alla mancanza di spazi verdi attrezzati. Alcuni comuni hanno "
        "risposto allestendo aule esterne con tettoie, panche e lavagne resistenti alla pioggia.",
        "I genitori, dopo qualche perplessità iniziale, si dicono in gran parte soddisfatti. I figli tornano a "
        "casa stanchi, sporchi di terra e con molte cose da raccontare.",
        "Scarica la guida per i docenti",
    ]), "kept"),
    # --- pages to drop -----------------------------------------------------------------
    ("https://www.grandemagazzino.example.it/mappa-del-sito", "2019-01-25T03:12:09Z", "\n".join([
        "Mappa del sito",
        "Home", "Uomo", "Donna", "Bambino", "Casa e cucina", "Elettronica", "Offerte", "Novità",
        "Lavora con noi", "Negozi", "Assistenza", "Termini e condizioni di vendita",
    ]), "too_few_sentences"),
    ("https://www.sito-vecchio.example.it/pagina-rimossa", "2018-02-02T02:02:02Z",
     "Errore 404\nPagina non trovata\nTorna alla home", "too_few_sentences"),
    ("https://www.scrittori-emergenti.example.it/autore/biografia", "2021-06-30T16:45:12Z", "\n".join([
        "Biografia dell'autore",
        "Nato in un piccolo paese dell'Appennino emiliano alla fine degli anni Settanta, ha lavorato per molti "
        "anni come tipografo e correttore di bozze prima di dedicarsi interamente alla scrittura, che considera "
        "un mestiere artigiano fatto di pazienza, di tentativi e di lunghe riletture notturne.",
        "I suoi racconti, pubblicati prima su riviste letterarie e poi raccolti in due volumi, descrivono con "
        "ironia affettuosa la vita delle comunità di montagna, i loro riti, le loro feste e le partenze dei "
        "giovani verso la città.",
        "Attualmente vive a Bologna, dove tiene laboratori di scrittura per ragazzi nelle biblioteche di "
        "quartiere e collabora con una piccola casa editrice indipendente come consulente.",
    ]), "too_few_sentences"),
    ("https://www.cuisine-maison.example.fr/soupe-a-l-oignon", "2020-12-15T18:03:29Z", "\n".join([
        "Accueil | Recettes | Contact",
        "La soupe à l'oignon gratinée",
        "La soupe à l'oignon est un grand classique de la cuisine parisienne. On la servait autrefois aux "
        "travailleurs des Halles au petit matin.",
        "Il faut d'abord émincer les oignons et les faire revenir longuement dans le beurre. Ils doivent "
        "devenir fondants et bien dorés, sans jamais brûler.",
        "On ajoute ensuite un peu de farine, puis le bouillon chaud, et on laisse mijoter une vingtaine de "
        "minutes. Pendant ce temps on fait griller des tranches de pain.",
        "La soupe est versée dans des bols allant au four, recouverte de pain et de fromage râpé. Il ne reste "
        "plus qu'à la faire gratiner quelques minutes avant de servir.",
    ]), "wrong_language"),
    ("https://www.reisen-blog.example.de/gardasee", "2019-07-07T10:21:44Z", "\n".join([
        MENU,
        "Una settimana sul lago di Garda",
        "Der Gardasee ist der größte See Italiens und seit über hundert Jahren ein beliebtes Reiseziel. Im "
        "Norden ragen steile Berge direkt aus dem Wasser, im Süden ist die Landschaft sanft und hügelig.",
        "Wir haben unser Hotel in Malcesine gebucht und sind jeden Tag mit dem Schiff zu einem anderen Ort "
        "gefahren. Besonders gut gefallen hat uns die Altstadt von Sirmione mit ihrer Burg.",
        "Mit der Seilbahn kann man von Malcesine auf den Monte Baldo fahren. Oben hat man einen wunderbaren "
        "Blick über den ganzen See bis zu den Alpen.",
        "Am Abend haben wir in kleinen Restaurants am Hafen gegessen. Die Preise waren etwas höher als erwartet, "
        "aber das Essen war ausgezeichnet.",
    ]), "wrong_language"),
    ("https://www.video-hot.example.it/", "2020-04-04T04:04:04Z", "\n".join([
        "Video porno gratis in alta definizione, aggiornati ogni giorno con nuove categorie.",
        "Entra subito nella nostra community e guarda migliaia di filmati senza registrazione.",
        "Le ragazze più belle della rete ti aspettano in diretta ventiquattro ore su ventiquattro.",
        "Iscriviti gratis e ricevi ogni settimana la selezione dei video più visti dagli utenti.",
        "Accesso riservato ai maggiorenni. Tutti i modelli hanno compiuto diciotto anni.",
        "Scopri anche le nostre chat private con migliaia di utenti collegati in questo momento.",
    ]), "bad_words"),
    ("https://www.negozio-scarpe.example.it/categorie/donna", "2020-01-11T13:09:50Z", "\n".join([
        MENU,
        "Scarpe donna",
        "Sneakers | Stivali | Sandali | Decolleté",
        "Ordina per: prezzo crescente",
        "Sneakers in pelle bianca 79,90 €",
        "Stivaletto nero con tacco 119,00 €",
        "Sandalo gioiello 59,90 €",
        "Spedizione gratuita sopra i 50 euro",
        "Resi entro 30 giorni",
        "Copyright 2020 Tutti i diritti riservati - P.IVA 01234567890",
    ]), "too_few_sentences"),
    ("https://www.portalenotizie.example.it/cookie-banner", "2021-03-03T08:00:12Z", "\n".join([
        "Informativa cookie",
        "Questo sito utilizza cookie tecnici e, previo tuo consenso, cookie di profilazione di terze parti.",
        "Chiudendo questo banner acconsenti all'uso dei cookie.",
        "Puoi leggere l'informativa sulla privacy completa e modificare le tue preferenze in ogni momento.",
        "We use cookies to personalise content and ads. Read our cookie policy.",
        "Accetta tutti | Rifiuta | Personalizza",
        "Il trattamento dei dati personali avviene secondo il Regolamento UE 2016/679.",
    ]), "too_few_sentences"),
    ("https://www.webapp-prenotazioni.example.it/", "2022-02-14T18:37:25Z", "\n".join([
        "Prenota il tuo tavolo",
        "Per utilizzare questo servizio è necessario abilitare JavaScript nel tuo browser.",
        "JavaScript must be enabled in order to use this site.",
        "Il tuo browser non supporta JavaScript oppure è stato disattivato.",
        "Caricamento in corso...",
        "Accedi | Registrati",
    ]), "too_few_sentences"),
    ("https://www.annunci-gratis.example.it/bici-usata", "2020-07-21T11:52:03Z", "\n".join([
        "Vendo bici da corsa",
        "Ottime condizioni.",
        "Prezzo trattabile.",
        "Zona Bologna.",
        "Tel. 333 0000000",
        "Contattare ore pasti.",
        "Inserito il 21/07/2020",
        "Segnala annuncio",
    ]), "too_few_sentences"),
    ("https://www.ricambiauto.example.it/catalogo/freni", "2019-04-30T14:27:38Z", "\n".join([
        "Catalogo ricambi auto - Impianto frenante",
        "Pastiglie freno anteriori compatibili con molti modelli di utilitarie",
        "Dischi freno ventilati di alta qualità per uso stradale e sportivo",
        "Kit tamburi posteriori completi di ganasce e molle di richiamo",
        "Liquido freni DOT 4 in confezione da un litro",
        "Consegna in 24/48 ore in tutta Italia",
        "Pagamento sicuro con carta di credito o bonifico",
        "Assistenza clienti dal lunedì al venerdì",
    ]), "too_few_sentences"),
    ("https://www.lorem-template.example.it/pagina-prova", "2018-05-18T09:14:44Z", "\n".join([
        "Benvenuti nel nostro nuovo sito",
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit. Sed do eiusmod tempor incididunt ut labore.",
        "Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris. Lorem ipsum dolor sit amet.",
        "Duis aute irure dolor in reprehenderit in voluptate velit esse. Lorem ipsum dolor sit amet.",
        "Excepteur sint occaecat cupidatat non proident. Lorem ipsum dolor sit amet, consectetur.",
        "Questa pagina è in costruzione.",
    ]), "too_few_sentences"),
    ("https://www.sviluppatori.example.it/snippet-javascript", "2021-09-01T10:10:10Z", "\n".join([
        "Snippet: validare un modulo",
        "function validate(form) { if (!form.email.value) { alert('Email obbligatoria!'); return false; } }",
        "document.getElementById('invia').addEventListener('click', function (e) { validate(e.target.form); });",
        "var config = { lingua: 'it', tema: 'scuro', versione: 2 };",
        "Copia il codice nella tua pagina.",
        "Funziona in tutti i browser moderni.",
    ]), "too_few_sentences"),
    ("https://www.forum-motori.example.it/thread/12345", "2020-12-02T23:41:17Z", "\n".join([
        "Forum Motori > Discussioni generali",
        "Consiglio olio motore?",
        "Ciao a tutti, che olio usate?",
        "Io uso il 5W30.",
        "Dipende dal motore.",
        "Quoto.",
        "Grazie mille!",
        "Rispondi | Cita | Segnala",
    ]), "too_few_sentences"),
    ("https://www.breve-notizia.example.it/meteo-oggi", "2021-11-23T06:30:00Z", "\n".join([
        "Meteo di oggi",
        "Oggi cielo coperto al nord.",
        "Piogge sparse sulle Alpi.",
        "Sole al centro e al sud.",
        "Temperature in calo in serata.",
        "Domani torna il bel tempo ovunque.",
    ]), "too_short"),
    ("https://www.gardening-tips.example.com/growing-tomatoes", "2020-06-10T14:45:33Z", "\n".join([
        "Home | Blog | Shop",
        "How to grow tomatoes on a balcony",
        "Tomatoes are among the most rewarding plants you can grow in a small space. They need at least six "
        "hours of direct sunlight and a large pot with good drainage.",
        "Choose a compact variety, such as cherry tomatoes, if your balcony is small. Plant the seedlings deep, "
        "because roots will grow along the buried stem and make the plant stronger.",
        "Water regularly and deeply, especially during hot weather, but avoid wetting the leaves. A layer of mulch "
        "helps keep the soil moist and cool.",
        "Feed the plants every two weeks with a fertiliser rich in potassium once the first flowers appear. "
        "Within a couple of months you will be picking your first ripe fruit.",
    ]), "wrong_language"),
    ("https://www.recetas-faciles.example.es/tortilla-de-patatas", "2019-03-15T12:05:48Z", "\n".join([
        "Inicio | Recetas | Contacto",
        "Tortilla de patatas tradicional",
        "La tortilla de patatas es uno de los platos más conocidos de la cocina española. Se prepara con pocos "
        "ingredientes, pero exige paciencia y algo de práctica.",
        "Primero se pelan las patatas y se cortan en láminas finas. Después se fríen a fuego lento en abundante "
        "aceite de oliva, junto con la cebolla si se desea.",
        "Mientras tanto se baten los huevos en un bol grande con una pizca de sal. Cuando las patatas están "
        "tiernas se escurren y se mezclan con el huevo batido.",
        "La mezcla se cuaja en una sartén por ambos lados, dándole la vuelta con la ayuda de un plato. Se puede "
        "servir caliente o fría, como tapa o como plato principal.",
    ]), "wrong_language"),
    ("https://www.blog-di-viaggio.example.it/napoli-in-tre-giorni", "2020-09-28T17:22:06Z", "\n".join([
        MENU,
        "Napoli in tre giorni",
        "Napoli è una città che non lascia indifferenti. Tra vicoli, chiese barocche e panorami sul golfo, tre "
        "giorni bastano appena per assaggiarne l'anima.",
        "Il primo giorno conviene dedicarlo al centro storico, da Spaccanapoli a San Gregorio Armeno. La sera si "
        "può cenare con una pizza fritta in una delle friggitorie del quartiere.",
        "Il secondo giorno è perfetto per il Museo Archeologico e per una passeggiata sul lungomare fino a "
        "Castel dell'Ovo. Il tramonto sul Vesuvio ripaga di ogni fatica.",
        "Il terzo giorno si può salire al Vomero con la funicolare e visitare la Certosa di San Martino. "
        "Da lassù la città appare intera, rumorosa e bellissima.",
        "Commento di un lettore: il traffico però è un vero casino, ma che cazzo di parcheggi ci sono!",
    ]), "bad_words"),
    ("https://www.condominio-regole.example.it/regolamento-completo", "2021-02-08T09:33:21Z", "\n".join(
        [f"Articolo {n}. Ogni condomino è tenuto a rispettare il presente regolamento in tutte le sue parti. "
         f"Le spese relative all'articolo {n} sono ripartite in base ai millesimi di proprietà. "
         f"Eventuali controversie sull'articolo {n} sono discusse in assemblea ordinaria."
         for n in range(1, 230)]), "too_long"),
]

KEPT = [url for url, _, _, fate in PAGES if fate == "kept"]
DROPPED = {url: fate for url, _, _, fate in PAGES if fate != "kept"}


def write(path: Path = OUT) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"text": text, "timestamp": ts, "url": url}, ensure_ascii=False) + "\n"
             for url, ts, text, _ in PAGES]
    # mtime=0 and no file name in the header: the bytes depend on the pages alone.
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as handle:
        handle.write("".join(lines).encode("utf-8"))


if __name__ == "__main__":
    write()
    print(f"{OUT}: {len(PAGES)} pages, {len(KEPT)} to keep, {OUT.stat().st_size} bytes")
