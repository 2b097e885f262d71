"""The coded clinical content the synthetic population draws on.

Every code here is a real code from its code system (SNOMED CT, the UK
dm+d, LOINC, ICD-10). Sensitive items carry the HL7 v3 ActCode
sensitivity label a later consent policy keys on:
PSY mental health, ETH substance misuse, STD sexually transmitted disease,
HIV, SEX sexual and reproductive health, SDV abuse/domestic violence
(used for safeguarding).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

SNOMED = "http://snomed.info/sct"
DMD = "https://dmd.nhs.uk"
LOINC = "http://loinc.org"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
UCUM = "http://unitsofmeasure.org"


@dataclass(frozen=True)
class Code:
    """One coding: system, code and its display."""

    system: str
    code: str
    display: str


@dataclass(frozen=True)
class Problem:
    """A long-term condition: who gets it, its codes, and what is prescribed for it."""

    snomed: Code
    icd10: Code
    min_age: int
    prevalence: float  # among people old enough, before the age gradient
    sensitivity: str | None = None
    medication: Code | None = None


def sct(code: str, display: str) -> Code:
    """A SNOMED CT coding."""
    return Code(SNOMED, code, display)


def dmd(code: str, display: str) -> Code:
    """A dm+d coding."""
    return Code(DMD, code, display)


def loinc(code: str, display: str) -> Code:
    """A LOINC coding."""
    return Code(LOINC, code, display)


def icd(code: str, display: str) -> Code:
    """An ICD-10 coding."""
    return Code(ICD10, code, display)


AMLODIPINE = dmd("319773006", "Amlodipine 5mg tablets")
AMOXICILLIN = dmd("39732411000001106", "Amoxicillin 500mg capsules")
CLARITHROMYCIN = dmd("41946511000001109", "Clarithromycin 500mg tablets")
DOXYCYCLINE = dmd("41948311000001104", "Doxycycline 100mg capsules")
CIPROFLOXACIN = dmd("39687811000001107", "Ciprofloxacin 500mg tablets")
PARACETAMOL = dmd("558911000001105", "Paracetamol 500mg capsules (A A H Pharmaceuticals Ltd)")
TIMOLOL = dmd("18616211000001106", "Timoptol 0.5% eye drops (DE Pharmaceuticals)")

PROBLEMS: tuple[Problem, ...] = (
    Problem(
        sct("38341003", "Hypertensive disorder"),
        icd("I10", "Essential (primary) hypertension"),
        35,
        0.30,
        medication=AMLODIPINE,
    ),
    Problem(
        sct("44054006", "Diabetes mellitus type 2"),
        icd("E11.9", "Type 2 diabetes mellitus without complications"),
        30,
        0.10,
    ),
    Problem(sct("195967001", "Asthma"), icd("J45.9", "Asthma, unspecified"), 3, 0.09),
    Problem(
        sct("13645005", "Chronic obstructive lung disease"),
        icd("J44.9", "Chronic obstructive pulmonary disease, unspecified"),
        45,
        0.06,
    ),
    Problem(
        sct("49436004", "Atrial fibrillation"),
        icd("I48.9", "Atrial fibrillation, unspecified"),
        55,
        0.07,
    ),
    Problem(
        sct("709044004", "Chronic kidney disease"),
        icd("N18.9", "Chronic kidney disease, unspecified"),
        50,
        0.08,
    ),
    Problem(
        sct("396275006", "Osteoarthritis"),
        icd("M19.9", "Arthrosis, unspecified"),
        45,
        0.15,
        medication=PARACETAMOL,
    ),
    Problem(
        sct("52448006", "Dementia"), icd("F03", "Unspecified dementia"), 70, 0.08, sensitivity="PSY"
    ),
    Problem(
        sct("35489007", "Depressive disorder"),
        icd("F32.9", "Depressive episode, unspecified"),
        14,
        0.10,
        sensitivity="PSY",
    ),
    Problem(
        sct("197480006", "Anxiety disorder"),
        icd("F41.9", "Anxiety disorder, unspecified"),
        12,
        0.07,
        sensitivity="PSY",
    ),
    Problem(
        sct("58214004", "Schizophrenia"),
        icd("F20.9", "Schizophrenia, unspecified"),
        18,
        0.007,
        sensitivity="PSY",
    ),
    Problem(
        sct("7200002", "Alcoholism"),
        icd("F10.2", "Alcohol dependence syndrome"),
        18,
        0.02,
        sensitivity="ETH",
    ),
    Problem(
        sct("66214007", "Substance abuse"),
        icd("F19.1", "Harmful use of multiple drugs and other psychoactive substances"),
        16,
        0.01,
        sensitivity="ETH",
    ),
    Problem(
        sct("86406008", "Human immunodeficiency virus infection"),
        icd("B24", "Unspecified human immunodeficiency virus [HIV] disease"),
        16,
        0.002,
        sensitivity="HIV",
    ),
    Problem(
        sct("105629000", "Chlamydial infection"),
        icd("A56.0", "Chlamydial infection of lower genitourinary tract"),
        16,
        0.02,
        sensitivity="STD",
        medication=DOXYCYCLINE,
    ),
    Problem(
        sct("59282003", "Pulmonary embolism"),
        icd("I26.9", "Pulmonary embolism without mention of acute cor pulmonale"),
        30,
        0.005,
    ),
    Problem(
        sct("203082005", "Fibromyalgia"),
        icd("M79.7", "Fibromyalgia"),
        25,
        0.02,
        medication=PARACETAMOL,
    ),
)

#: Acute admissions: (reason ICD-10, reason SNOMED, procedure or None)
ADMISSIONS: tuple[tuple[Code, Code, Code | None], ...] = (
    (icd("J18.9", "Pneumonia, unspecified"), sct("233604007", "Pneumonia"), None),
    (
        icd("I21.9", "Acute myocardial infarction, unspecified"),
        sct("22298006", "Myocardial infarction"),
        sct("232717009", "Coronary artery bypass grafting"),
    ),
    (
        icd("K35.8", "Acute appendicitis, other and unspecified"),
        sct("74400008", "Appendicitis"),
        sct("80146002", "Appendectomy"),
    ),
    (
        icd("S72.0", "Fracture of neck of femur"),
        sct("5913000", "Fracture of neck of femur"),
        sct("52734007", "Total replacement of hip"),
    ),
    (
        icd("I63.9", "Cerebral infarction, unspecified"),
        sct("230690007", "Cerebrovascular accident"),
        None,
    ),
    (
        icd("K57.3", "Diverticular disease of large intestine without perforation or abscess"),
        sct("397881000", "Diverticular disease"),
        sct("73761001", "Colonoscopy"),
    ),
)

ALLERGIES: tuple[tuple[Code, float], ...] = (
    (sct("91936005", "Allergy to penicillin"), 0.08),
    (sct("91935009", "Allergy to peanuts"), 0.02),
    (sct("300913006", "Shellfish allergy"), 0.01),
)
NO_KNOWN_DRUG_ALLERGY = sct("409137002", "No known drug allergy")

VACCINES: dict[str, Code] = {
    "flu": dmd(
        "11278411000001109",
        "Influenza vaccine (split virion, inactivated) suspension for injection",
    ),
    "pneumo": dmd(
        "10245211000001108", "Pneumococcal polysaccharide conjugated vaccine (adsorbed) suspension"
    ),
    "covid": dmd(
        "39115611000001103", "Comirnaty COVID-19 mRNA Vaccine 30micrograms/0.3ml dose concentrate"
    ),
}

#: (SNOMED CT code, LOINC code, unit, low, high) vital signs taken in primary care and the
#: community. UK primary care records SNOMED CT; the LOINC coding rides along for systems
#: that read LOINC. The SNOMED CT codes are the ones UK Core's own vital-signs examples use
#: (UKCore-Observation-VitalSigns-BodyWeight/-BMI/-BloodPressure-Example), heart rate the
#: observable entity 364075005 |Heart rate| (the example's 444981005 is *resting* heart rate).
VITALS: tuple[tuple[Code, Code, str, float, float], ...] = (
    (sct("27113001", "Body weight"), loinc("29463-7", "Body weight"), "kg", 50.0, 110.0),
    (
        sct("60621009", "Body mass index"),
        loinc("39156-5", "Body mass index (BMI) [Ratio]"),
        "kg/m2",
        18.0,
        38.0,
    ),
    (sct("364075005", "Heart rate"), loinc("8867-4", "Heart rate"), "/min", 52.0, 100.0),
)
BP_PANEL = sct("75367002", "Blood pressure")
BP_PANEL_LOINC = loinc("85354-9", "Blood pressure panel with all children optional")
SYSTOLIC = (
    sct("72313002", "Systolic arterial pressure"),
    loinc("8480-6", "Systolic blood pressure"),
)
DIASTOLIC = (
    sct("1091811000000102", "Diastolic arterial pressure"),
    loinc("8462-4", "Diastolic blood pressure"),
)
#: PHQ-9 total score: SNOMED CT 720433000 |Patient Health Questionnaire Nine Item score| (the
#: observable UK primary care records the PHQ-9 with), LOINC 44261-6 alongside
PHQ9 = sct("720433000", "Patient Health Questionnaire Nine Item score")
PHQ9_LOINC = loinc("44261-6", "Patient Health Questionnaire 9 item (PHQ-9) total score [Reported]")

#: (code, unit, low, high) hospital laboratory results
LABS: tuple[tuple[Code, str, float, float], ...] = (
    (loinc("718-7", "Hemoglobin [Mass/volume] in Blood"), "g/L", 105.0, 165.0),
    (loinc("6690-2", "Leukocytes [#/volume] in Blood by Automated count"), "10*9/L", 3.5, 14.0),
    (loinc("2951-2", "Sodium [Moles/volume] in Serum or Plasma"), "mmol/L", 130.0, 146.0),
    (loinc("2823-3", "Potassium [Moles/volume] in Serum or Plasma"), "mmol/L", 3.3, 5.6),
    (loinc("14682-9", "Creatinine [Moles/volume] in Serum or Plasma"), "umol/L", 50.0, 180.0),
    (loinc("1988-5", "C reactive protein [Mass/volume] in Serum or Plasma"), "mg/L", 1.0, 120.0),
)

ENCOUNTER_GP = sct("185317003", "Telephone encounter")
ENCOUNTER_SURGERY = sct("185389009", "Follow-up visit")
REFERRALS: tuple[Code, ...] = (sct("306206005", "Referral to service"),)
REFERRAL_SERVICES: tuple[Code, ...] = (
    sct("789718008", "Cardiology service"),
    sct("310161006", "Orthopaedic service"),
    sct("708190004", "Immunology service"),
)
DISCHARGE_SUMMARY = sct("373942005", "Discharge summary")
EOL_CARE_PLAN = sct("734163000", "Care plan")


def problems_for(seed: int, index: int, age: int) -> list[Problem]:
    """The long-term conditions person ``index`` of population ``seed`` has (deterministic)."""
    rng = random.Random(f"{seed}:{index}:problems")
    out: list[Problem] = []
    for p in PROBLEMS:
        gradient = 1.0 if p.sensitivity else min(2.5, max(0.3, age / 45))
        if age >= p.min_age and rng.random() < p.prevalence * gradient:
            out.append(p)
    return out
