"""Common names, streets and towns for the synthetic population (West Yorkshire-like)."""

FAMILY = (
    "Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Johnson", "Davies", "Patel",
    "Robinson", "Wright", "Thompson", "Evans", "Walker", "White", "Roberts", "Green", "Hall",
    "Wood", "Jackson", "Clarke", "Khan", "Hussain", "Ahmed", "Begum", "Harrison", "Hughes",
    "Edwards", "Turner", "Lewis", "Shaw", "Holmes", "Kaur", "Singh", "Barker", "Sutcliffe",
    "Ackroyd", "Dawson", "Pickles", "Haigh", "Nowak", "Kowalski", "O'Brien", "Mitchell",
    "Ellis", "Marshall", "Atkinson", "Firth", "Brook", "Lister", "Moore", "Cooper",
)
GIVEN_MALE = (
    "Oliver", "George", "Harry", "Jack", "Muhammad", "Noah", "Leo", "Arthur", "Oscar",
    "Charlie", "James", "David", "John", "Michael", "Peter", "Paul", "Robert", "William",
    "Thomas", "Daniel", "Stephen", "Andrew", "Mark", "Ali", "Imran", "Kevin", "Gary",
    "Brian", "Kenneth", "Derek", "Ronald", "Alan", "Christopher",
)
GIVEN_FEMALE = (
    "Olivia", "Amelia", "Isla", "Ava", "Mia", "Ivy", "Lily", "Freya", "Grace", "Aisha",
    "Fatima", "Sarah", "Emma", "Rebecca", "Laura", "Susan", "Margaret", "Patricia", "Jean",
    "Elizabeth", "Mary", "Joan", "Dorothy", "Barbara", "Janet", "Karen", "Helen", "Julie",
    "Zainab", "Amira", "Sophie", "Charlotte", "Hannah",
)
STREETS = (
    "High Street", "Church Lane", "Station Road", "Victoria Road", "Park Avenue",
    "Mill Lane", "Manor Road", "Queen Street", "Springfield Road", "Moor Lane",
    "Green Lane", "Halifax Road", "Leeds Road", "Beech Grove", "Westfield Road",
    "Albert Terrace", "Chapel Street", "Oak Crescent", "Kirkgate", "Northgate",
)
#: (town, postcode area, number of districts used)
TOWNS = (
    ("Leeds", "LS", 29),
    ("Bradford", "BD", 24),
    ("Wakefield", "WF", 17),
    ("Halifax", "HX", 7),
    ("Huddersfield", "HD", 9),
)

#: Familiar forms social-care workers record instead of the registered name
NICKNAMES = {
    "William": "Bill", "Robert": "Bob", "Margaret": "Peggy", "Elizabeth": "Liz",
    "Christopher": "Chris", "Thomas": "Tom", "James": "Jim", "Michael": "Mike",
    "Patricia": "Pat", "Susan": "Sue", "Stephen": "Steve", "Kenneth": "Ken",
    "Daniel": "Dan", "Andrew": "Andy", "Rebecca": "Becky", "Dorothy": "Dot",
    "Barbara": "Babs", "Ronald": "Ron", "Charlotte": "Lottie", "Oliver": "Ollie",
}
